"""Deployable programs: StableHLO through jax.export, and the network as an ONNX graph
(onnx_graph); the `hydrajax-export` command (cli)."""
