"""A pickle's opcodes checked before anything in it is unpickled.

`pickle` trusts the lengths and references a file declares: a BINBYTES8 claiming 2 GB
allocates 2 GB before finding 3 bytes, and memo references (GET) let a few bytes name a
structure that is a DAG of depth 30 and a tree of 2**30 nodes, which hashing, printing or
any recursive walk then expands. This pass reads the opcodes with `pickletools` (which
never allocates more than the bytes present), replays their effect on the stack as a graph
of nodes, and refuses:
- a length beyond the data (a FRAME, string or bytes longer than what follows);
- a memo index other than the next one: the unpickler sizes its memo table by the largest
  index (16 bytes an index), and pickle numbers its entries 0, 1, 2, ... (Python 2's
  cPickle, which the official checkpoints were saved with, 1, 2, 3, ...);
- out-of-band buffers, bytearrays and the copyreg extension registry (torch.save writes
  none of them);
- BUILD (which sets attributes or calls `__setstate__`) on anything but a fresh
  OrderedDict or numpy dtype made by the pickle itself;
- a structure whose tree expansion is larger than a small multiple of the number of
  objects the pickle builds, and self-referencing structures;
- set(), frozenset() and OrderedDict() of anything but a list or tuple the pickle built
  (a string or a tensor would be copied element by element), and more items copied by
  these calls (and by BUILD into an OrderedDict) than that multiple: one memo entry
  passed to many calls, each result kept in the memo, is copied by every call;
- _codecs.encode building more bytes than the pickle holds (one string encoded again and
  again);
- dict keys and set items other than strings, bytes and numbers, and many distinct numbers
  with one hash (dict and set insertion is quadratic in the number of colliding keys; the
  hashes of str and bytes are randomised per process).
"""
from __future__ import annotations

import collections
import io
import pickletools
from typing import Callable

from hydrajax.runtime.stored_zip import describe, printable

# BUILD is how pickle restores these two: OrderedDict's `_metadata`, a dtype's byte order.
BUILD_TARGETS = frozenset({("collections", "OrderedDict"), ("numpy", "dtype")})
_REFUSED = {
    "NEXT_BUFFER": "an out-of-band buffer", "READONLY_BUFFER": "an out-of-band buffer",
    "BYTEARRAY8": "a bytearray", "EXT1": "a copyreg extension code",
    "EXT2": "a copyreg extension code", "EXT4": "a copyreg extension code",
}
_MUTATORS = {"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"}
_PUT = {"PUT", "BINPUT", "LONG_BINPUT"}
_GET = {"GET", "BINGET", "LONG_BINGET"}
_NUMBERS = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT",
            "BINFLOAT"}
_BYTES = {"SHORT_BINBYTES", "BINBYTES", "BINBYTES8"}
_CONSTANTS = {"NONE", "NEWTRUE", "NEWFALSE"}
_SETS = {("builtins", "set"), ("builtins", "frozenset"), ("__builtin__", "set"),
         ("__builtin__", "frozenset")}
_DICTS = {("collections", "OrderedDict"), ("builtins", "dict"), ("__builtin__", "dict")}
_BYTES_CALLS = {("_codecs", "encode")}
_ORDERED_DICT_NAMES = frozenset(dir(collections.OrderedDict))
_SEQUENCES = {"EMPTY_LIST", "LIST", "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3"}
_TEXT = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING",
         "SHORT_BINSTRING"}
# Expanded as a tree, no node of a legitimate checkpoint is much larger than the graph:
# shared strings and storage types are leaves, shared tensors a dozen nodes.
EXPANSION_FACTOR = 16
EXPANSION_SLACK = 4096
MAX_SAME_HASH = 8


class PickleCheckError(ValueError):
  """The pickle is damaged or built to exhaust the reader; the message says how."""


class Truncated(PickleCheckError):
  """The pickle ends before its STOP opcode (or inside an argument)."""


def check(f: io.BytesIO, on_global: Callable[[str, str], None] = lambda m, n: None) -> int:
  """Check the pickle that starts at `f`'s position; return the position after its STOP,
  leaving `f` there. `on_global(module, name)` sees each global as it is named (and may
  raise to refuse it). Raises Truncated or PickleCheckError."""
  start, end = f.tell(), len(f.getbuffer())
  graph = _Graph()
  memo: dict[int, int] = {}
  memo_base = 0  # the first PUT's index: 0 as pickle numbers the memo, 1 as cPickle did
  stack: list[int | None] = []  # None is a MARK
  numbers: dict[int, set] = {}

  def pop(n: int) -> list:
    if len(stack) < n:
      raise PickleCheckError("stack underflow")
    items = stack[len(stack) - n:]
    del stack[len(stack) - n:]
    if None in items:
      raise PickleCheckError("a MARK used as an object")
    return items

  def pop_mark() -> list:
    for i in range(len(stack) - 1, -1, -1):
      if stack[i] is None:
        items = stack[i + 1:]
        del stack[i:]
        return items
    raise PickleCheckError("no MARK on the stack")

  try:
    for op, arg, pos in pickletools.genops(f):
      name = op.name
      if name in _REFUSED:
        raise PickleCheckError(f"opcode {name} ({_REFUSED[name]}) at byte {pos - start}")
      if name == "FRAME" and arg > end - f.tell():
        raise Truncated(f"a FRAME of {arg} bytes with {end - f.tell()} left")
      if name == "MARK":
        stack.append(None)
      elif name in _PUT or name == "MEMOIZE":
        (node,) = pop(1)
        index = len(memo)
        if name != "MEMOIZE":
          if not memo and arg in (0, 1):
            memo_base = arg
          if arg != len(memo) + memo_base:
            raise PickleCheckError(f"memo index {arg} at byte {pos - start} where pickle "
                                   f"writes {len(memo) + memo_base}")
          index = arg
        if index in memo:
          raise PickleCheckError(f"memo index {index} written twice")
        memo[index] = node
        stack.append(node)
      elif name in _GET:
        if arg not in memo:
          raise PickleCheckError(f"memo key {arg} read before it is written")
        stack.append(memo[arg])
      elif name == "DUP":
        stack.extend(pop(1) * 2)
      elif name == "POP":
        if stack and stack[-1] is None:
          stack.pop()
        else:
          pop(1)
      elif name == "POP_MARK":
        pop_mark()
      elif name in _MUTATORS:
        items = pop_mark() if name in ("APPENDS", "SETITEMS", "ADDITEMS") else pop(
            2 if name == "SETITEM" else 1)
        (target,) = pop(1)
        if name == "BUILD":
          graph.check_build(target, items[0])
        if name in ("SETITEM", "SETITEMS"):
          graph.keys.extend(items[0::2])
        elif name == "ADDITEMS":
          graph.keys.extend(items)
        graph.children[target].extend(items)
        stack.append(target)
      elif name == "STOP":
        if len(stack) != 1:
          raise PickleCheckError(f"{len(stack)} items left on the stack at STOP")
        break
      elif name not in ("PROTO", "FRAME"):  # one new object from what it pops or its arg
        before = op.stack_before
        if pickletools.markobject in before:
          marked = pop_mark()
          items = pop(before.index(pickletools.markobject)) + marked
        else:
          items = pop(len(before))
        if name == "INST":  # as REDUCE: (the global, the args as a tuple)
          items = [graph.new([]), graph.new(items)]
          graph.globals[items[0]] = _global(arg, on_global)
          graph.sequences.add(items[1])
        elif name == "OBJ":
          items = [items[0], graph.new(items[1:])]
          graph.sequences.add(items[1])
        node = graph.new(items)
        if name == "GLOBAL":
          graph.globals[node] = _global(arg, on_global)
        elif name == "STACK_GLOBAL":
          if not all(i in graph.texts for i in items):
            raise PickleCheckError("STACK_GLOBAL of names that are not strings")
          graph.globals[node] = _global(f"{graph.texts[items[0]]} {graph.texts[items[1]]}",
                                        on_global)
        elif name in ("REDUCE", "NEWOBJ", "NEWOBJ_EX", "OBJ", "INST"):
          if items[0] in graph.globals:
            graph.calls[node] = graph.globals[items[0]]
          if graph.calls.get(node) in _BYTES_CALLS:
            graph.literals.add(node)
        elif name in _TEXT:
          graph.texts[node] = arg
          graph.literals.add(node)
        elif name in _BYTES or name in _CONSTANTS:
          graph.literals.add(node)
        elif name in _NUMBERS:
          graph.literals.add(node)
          same = numbers.setdefault(hash(arg), set())
          same.add(arg)
          if len(same) > MAX_SAME_HASH:
            raise PickleCheckError(f"{len(same)} distinct numbers with one hash (a "
                                   f"hash-collision attack on dict insertion)")
        elif name in _SEQUENCES:
          graph.sequences.add(node)
        elif name in ("EMPTY_DICT", "DICT"):
          graph.dicts.add(node)
        if name == "DICT":
          graph.keys.extend(items[0::2])
        elif name == "FROZENSET":
          graph.keys.extend(items)
        if op.stack_after:
          stack.append(node)
    else:
      raise Truncated("no STOP opcode")
  except PickleCheckError:
    raise
  except ValueError as e:  # pickletools: unknown opcode, argument past the end, ...
    if f.tell() >= end:
      raise Truncated(describe(e, with_type=False)) from e
    raise PickleCheckError(describe(e, with_type=False)) from e
  graph.check_calls(f.tell() - start)
  graph.check_keys()
  graph.check_expansion()
  return f.tell()


def _global(arg: str, on_global: Callable[[str, str], None]) -> tuple[str, str]:
  module, _, name = arg.partition(" ")
  on_global(module, name)
  return module, name


class _Graph:
  """The objects a pickle builds: node i holds children[i] (repeats and shared nodes
  included); `globals` names the global a node is, `calls` the one that made it."""

  def __init__(self):
    self.children: list[list[int]] = []
    self.globals: dict[int, tuple[str, str]] = {}
    self.calls: dict[int, tuple[str, str]] = {}
    self.texts: dict[int, str] = {}
    self.literals: set[int] = set()  # strings, bytes, numbers, None, booleans
    self.keys: list[int] = []  # nodes used as dict keys or set items
    self.sequences: set[int] = set()  # lists and tuples
    self.dicts: set[int] = set()
    self.build_states: list[int] = []  # dicts BUILD copies into an OrderedDict

  def new(self, items: list[int]) -> int:
    self.children.append(list(items))
    return len(self.children) - 1

  def describe(self, node: int) -> str:
    if node in self.texts:
      return "a string"
    if node in self.globals:
      return f"the global {printable('.'.join(self.globals[node]))}"
    if node in self.calls:
      return f"the result of {printable('.'.join(self.calls[node]))}"
    return "an object"

  def check_build(self, target: int, state: int) -> None:
    """BUILD only restores a fresh numpy dtype (its `__setstate__` checks the tuple) or an
    OrderedDict's own attributes (`_metadata`): a dict of names that shadow none of its
    methods, so the object a file yields behaves as an OrderedDict."""
    call = self.calls.get(target)
    if call not in BUILD_TARGETS:
      raise PickleCheckError(f"BUILD (setting attributes) on {self.describe(target)}, not on "
                             f"a fresh OrderedDict or numpy dtype")
    if call == ("collections", "OrderedDict"):
      self.build_states.append(state)
      names = self.children[state][0::2] if state in self.dicts else [None]
      bad = [n for n in names if self.texts.get(n, "__class__") in _ORDERED_DICT_NAMES]
      if bad:
        shown = printable(self.texts[bad[0]]) if bad[0] in self.texts else "a non-dict state"
        raise PickleCheckError(f"BUILD on an OrderedDict setting {shown}, which would "
                               f"replace one of its methods or its class")

  def check_calls(self, pickle_bytes: int) -> None:
    """What the allowed calls copy: set(), frozenset() and OrderedDict() take a list or
    tuple the pickle built (whose items become dict keys or set items, see check_keys; a
    string or a tensor would be copied element by element), and together with BUILD into an
    OrderedDict copy no more items than EXPANSION_FACTOR times the objects the pickle builds
    plus EXPANSION_SLACK; _codecs.encode builds no more bytes than the pickle holds. (A
    pickler passes each such argument to one call; a result kept only in the memo is out of
    reach of check_expansion.)"""
    limit = EXPANSION_FACTOR * len(self.children) + EXPANSION_SLACK
    copied, encoded = sum(len(self.children[state]) // 2 for state in self.build_states), 0
    for node, call in self.calls.items():
      if call not in _SETS and call not in _DICTS and call not in _BYTES_CALLS:
        continue
      name = ".".join(call)  # one of the constant names above
      args = self.children[node][1]  # REDUCE's children: the callable, the args tuple
      if args not in self.sequences:
        raise PickleCheckError(f"{name}() called with arguments that are "
                               f"{self.describe(args)}, not a tuple")
      if not self.children[args]:
        continue
      first = self.children[args][0]
      if call in _BYTES_CALLS:
        encoded += len(self.texts.get(first, ""))
        continue
      # set([item, ...]); OrderedDict([[key, value], ...]) as Python 2 pickled it
      if first not in self.sequences:
        raise PickleCheckError(f"{name}() of {self.describe(first)}, not a list or tuple")
      items = self.children[first]
      copied += len(items)
      if copied > limit:
        break
      if call in _DICTS:
        if any(i not in self.sequences or len(self.children[i]) != 2 for i in items):
          raise PickleCheckError(f"{name}() of an item that is not a [key, value] pair")
        items = [self.children[i][0] for i in items]
      self.keys.extend(items)
    if copied > limit:
      raise PickleCheckError(f"set(), frozenset(), OrderedDict() and BUILD copy over {limit} "
                             f"items, more than a pickle of {len(self.children)} objects may "
                             f"build")
    if encoded > pickle_bytes:
      raise PickleCheckError(f"_codecs.encode builds {encoded} bytes, more than the "
                             f"{pickle_bytes}-byte pickle holds (a string encoded more than "
                             f"once)")

  def check_keys(self) -> None:
    """Dict keys and set items (also those check_calls found) must be literals (so their
    hashing is linear and collision-checked)."""
    for key in self.keys:
      if key not in self.literals:
        raise PickleCheckError(f"a dict key or set item that is {self.describe(key)}, not "
                               f"a string or number")

  def check_expansion(self) -> None:
    """Refuse a node whose tree expansion (shared parts counted at every use) exceeds
    EXPANSION_FACTOR * nodes + EXPANSION_SLACK, and any self-referencing structure."""
    children = self.children
    limit = EXPANSION_FACTOR * len(children) + EXPANSION_SLACK
    size = [0] * len(children)  # 0: not visited, -1: on the current path
    for root in range(len(children)):
      todo = [(root, False)] if not size[root] else []
      while todo:
        node, done = todo.pop()
        if done:
          size[node] = 1 + sum(size[k] for k in children[node])
          if size[node] > limit:
            raise PickleCheckError(f"shared sub-objects expand to over {limit} items (a "
                                   f"pickle of {len(children)} objects)")
        elif not size[node]:
          size[node] = -1
          todo.append((node, True))
          for k in children[node]:
            if size[k] == -1:
              raise PickleCheckError("a self-referencing structure")
            if not size[k]:
              todo.append((k, False))
