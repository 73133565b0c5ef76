"""p2pfl: peer-to-peer federated learning by knowledge gossip between heterogeneous models."""

from p2pfl.config import ConfigError, Scenario, load_scenario

__all__ = ["Simulation", "SimulationResult", "Node", "Scenario", "load_scenario", "ConfigError"]


def __getattr__(name: str):
    # torch-heavy runtimes load on first use, so `p2pfl topo` and config checks start fast
    if name in ("Simulation", "SimulationResult"):
        from p2pfl import sim
        return getattr(sim, name)
    if name == "Node":
        from p2pfl.node import Node
        return Node
    raise AttributeError(f"module 'p2pfl' has no attribute {name!r}")
