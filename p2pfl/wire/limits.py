"""Hard limits on everything a peer can send, each with its reason (checked in messages.py and framing.py)."""

MAX_FRAME_BYTES = 16 * 1024 * 1024  # a 5k-row x 100-class fp32 slice is 2 MB; adapters may be a few MB;
#                                     anything bigger is a bug or an attack
MAX_CLASSES = 1000  # ImageNet-1k is the widest label space we aim at
MAX_EMBED_DIM = 4096  # prototypes: an embedding's width (the zoo's are 32)
MAX_REF_ROWS = 100_000  # reference sets are a few thousand rows; 100k covers any slice index
MAX_PARAMS = 10_000_000  # fedavg is for small models (MNIST-1D MLP/CNN are < 1M); int8 of 10M fits a frame
MAX_PAYLOAD_ELEMENTS = MAX_PARAMS  # decoded values per payload (40 MB float32): sparse codecs
#                                    (top-k) decode to more values than they have bytes, so bytes alone don't bound it
MAX_INT = 2**63 - 1  # counters (round, samples, nonce) fit a signed 64-bit int in numpy / JSON logs
MAX_ID_LEN = 128  # node ids, arch/mode/codec names, digests: libp2p peer ids are ~52 chars, sha256 hex 64
MAX_STR_LEN = 1024  # free text (bye reason, status strings): a paragraph is plenty
MAX_CODECS = 32  # codec names in a hello: the registry has a handful
MAX_LIST_LEN = 1024  # any msgpack array: label_counts has <= MAX_CLASSES entries, everything else fewer
MAX_MAP_LEN = 256  # any msgpack map: messages have <= 12 keys, a status map a few dozen
MAX_STATUS_DEPTH = 4  # status is {"node": {"peers": [{...}]}} at most; deeper is not a status page
MAX_STATUS_ITEMS = 10_000  # values in a whole status reply (bounds work, whatever the nesting)
MAX_PENDING_STATUS = 16  # unanswered status requests remembered per peer; `p2pfl status` sends one
MAX_MASS = 1e12  # push-sum mass share: each node starts with 1 and mass is conserved, so an honest share is at
#                  most the network's node count; 1e12 keeps every sum of shares finite
MAX_COUNT = 2**53 // MAX_CLASSES  # a class's label count (and a node's samples: 2^53): every sum of them stays
#                                   exact in float64 and fits int64; 9e12 samples per class is past any dataset
