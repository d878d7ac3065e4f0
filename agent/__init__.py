"""The EdgeOps device agent: runs the active model, applies signed OTA updates, reports.

    from agent import Agent, AgentConfig
    agent = Agent(AgentConfig(home=..., device_id="dev-1", server_url="http://...")).start()
    prediction = agent.predict(batch)
    agent.stop()

Import rule: the agent imports only edgeops, onnxruntime, paho-mqtt, tuf, numpy,
cryptography, psutil and the standard library. Importing this package has no side effects.
"""

from agent.config import AgentConfig, init_agent_home, load_config
from agent.daemon import Agent, Prediction
from agent.runtime import NoModelError

__all__ = ["Agent", "AgentConfig", "NoModelError", "Prediction", "init_agent_home", "load_config"]
