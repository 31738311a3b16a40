"""Small ONNX files of the exported form, built with onnx's helper API: (1, H, W, 3) uint8 in,
"segm" (1, H, W, 2) and "depth" (1, H, W) out, the network's stand-in where a test needs a
graph (the demo, `--onnx`) but not the network, and the base of broken or hostile graphs."""
import onnx
from onnx import TensorProto, helper


def graph_file(path, height: int, width: int, *, op=("ReduceMean", ""), metadata=None,
               extra=()) -> str:
  """Writes the graph to `path`: segm = the mean colour twice, depth = the mean colour; `op`
  (type, domain) computes the mean, `metadata` is the "hydrajax" property's text, `extra`
  adds nodes."""
  op_type, domain = op
  nodes = [helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
           helper.make_node(op_type, ["x", "axes"], ["mean"], domain=domain, keepdims=1),
           helper.make_node("Concat", ["mean", "mean"], ["segm"], axis=3),
           helper.make_node("Squeeze", ["mean", "axes"], ["depth"]), *extra]
  graph = helper.make_graph(
      nodes, "g",
      [helper.make_tensor_value_info("image", TensorProto.UINT8, [1, height, width, 3])],
      [helper.make_tensor_value_info("segm", TensorProto.FLOAT, [1, height, width, 2]),
       helper.make_tensor_value_info("depth", TensorProto.FLOAT, [1, height, width])],
      [helper.make_tensor("axes", TensorProto.INT64, [1], [3])])
  opsets = [helper.make_opsetid("", 18)] + ([helper.make_opsetid(domain, 1)] if domain else [])
  model = helper.make_model(graph, opset_imports=opsets, ir_version=8)
  if metadata is not None:
    helper.set_model_props(model, {"hydrajax": metadata})
  onnx.save(model, str(path))
  return str(path)
