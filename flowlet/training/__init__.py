"""Training of the FlowLet velocity network: configuration, data, loss, EMA, distributed helpers and the loop.

Import the pieces from their modules (``flowlet.training.trainer.train``, ``flowlet.training.config``); this
package does not import them eagerly, so that ``import flowlet.training.config`` stays light.
"""
