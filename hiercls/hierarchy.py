"""Class hierarchies: trees over the classes, their LCA distances and coarse groupings.

A hierarchy is a rooted tree whose leaves are exactly the classes. The distance between two classes is
the height of their lowest common ancestor (LCA), a node's height being the longest path from it down
to a leaf; d(a, a) = 0. This is the convention of Bertinetto et al., "Making Better Mistakes" (CVPR
2020, Sec. 3) and of Barz & Denzler, "Hierarchy-based Image Embeddings for Semantic Image Retrieval"
(WACV 2019), whose CIFAR-100 WordNet tree ships here as ``cifar100-wordnet``.

Built-in hierarchies (text files in ``hiercls/hierarchies/``, classes in the official CIFAR-100 label
order of Krizhevsky (2009)):

* ``cifar100-l5``: the 5-level balanced tree of the CIFAR-100 tables of the follow-up papers (HAF,
  HAFrame, BiLT, Hier-COS); the default.
* ``cifar100-coarse``: root -> the 20 official superclasses -> the 100 classes.
* ``cifar100-wordnet``: Barz & Denzler's WordNet tree, unmodified.
* ``cifar100-wordnet-otter``: the same with otter under aquatic_mammal, the tree the original
  making-better-mistakes fork's final code trained its losses on.

Run ``python -m hiercls.hierarchy show NAME_OR_PATH`` to print a tree and its statistics.
"""

from __future__ import annotations

import argparse
import pickle
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from functools import cache
from importlib import resources
from pathlib import Path

import torch

from hiercls.registry import HIERARCHIES

__all__ = [
    "BUILTIN_HIERARCHIES",
    "CIFAR100_CLASSES",
    "CIFAR100_SUPERCLASSES",
    "DEFAULT_HIERARCHY",
    "Hierarchy",
    "HierarchyError",
    "cifar100_superclass_labels",
    "load_cifar100_hierarchy",
    "load_hierarchy",
]

BUILTIN_HIERARCHIES = ("cifar100-l5", "cifar100-coarse", "cifar100-wordnet", "cifar100-wordnet-otter")
DEFAULT_HIERARCHY = "cifar100-l5"


class HierarchyError(ValueError):
    """An invalid hierarchy or an unusable hierarchy file; the message names the offending node."""


def _package_text(filename: str) -> str:
    return resources.files("hiercls").joinpath("hierarchies", filename).read_text(encoding="utf-8")


def _content_lines(text: str) -> Iterable[tuple[int, list[str]]]:
    """(line number, fields) of each non-blank line, with ``#`` comments removed."""
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if fields:
            yield number, fields


@cache
def _cifar100_table() -> tuple[tuple[str, ...], tuple[str, ...], tuple[int, ...]]:
    fine: list[str] = []
    coarse_of: list[int] = []
    coarse_names: dict[int, str] = {}
    for _, (fine_id, fine_name, coarse_id, coarse_name) in _content_lines(
        _package_text("cifar100-classes.txt")
    ):
        assert int(fine_id) == len(fine)
        fine.append(fine_name)
        coarse_of.append(int(coarse_id))
        coarse_names[int(coarse_id)] = coarse_name
    return tuple(fine), tuple(coarse_names[k] for k in range(len(coarse_names))), tuple(coarse_of)


CIFAR100_CLASSES: tuple[str, ...] = _cifar100_table()[0]
"""The 100 CIFAR-100 fine class names in the official label order (0 apple ... 99 worm)."""

CIFAR100_SUPERCLASSES: tuple[str, ...] = _cifar100_table()[1]
"""The 20 CIFAR-100 superclass names in the official coarse label order (0 aquatic_mammals ...)."""


def cifar100_superclass_labels() -> torch.Tensor:
    """Official CIFAR-100 coarse label of every fine label (Krizhevsky, 2009).

    Returns:
        LongTensor [100]: entry k is the superclass id (0..19) of fine label k; every superclass
        holds exactly 5 classes.
    """
    return torch.tensor(_cifar100_table()[2], dtype=torch.long)


class Hierarchy:
    """A validated rooted tree whose leaves are the classes, with LCA distances.

    Node indices: ``nodes[:num_classes]`` are the classes in label order, the internal nodes follow in
    breadth-first order from the root. All tensors live on the CPU.

    Attributes:
        name: where the tree came from (built-in name, file path or ``"custom"``).
        classes: the C class names in label order.
        num_classes: C.
        nodes: all N node names.
        root: the root's name.
        parent_index: LongTensor [N], each node's parent index, -1 for the root.
        depth: LongTensor [N], edges from the root (root 0).
        height: LongTensor [N], longest path down to a leaf (leaves 0).
        membership: BoolTensor [N, C], ``membership[n, c]`` is True when class c lies under node n
            (a leaf lies under itself, every class under the root).
        distances: LongTensor [C, C], d(a, b) = height of LCA(a, b), d(a, a) = 0 (Bertinetto et al.,
            CVPR 2020; Barz & Denzler, WACV 2019).
        max_distance: the largest entry of ``distances`` (int).

    Raises:
        HierarchyError: see :meth:`from_edges`.
    """

    def __init__(
        self,
        edges: Iterable[tuple[str, str]],
        classes: Sequence[str],
        *,
        name: str = "custom",
        group_ids: dict[str, int] | None = None,
    ) -> None:
        self.name = name
        self.classes: list[str] = list(classes)
        self.num_classes = len(self.classes)
        self._group_ids = dict(group_ids or {})
        parent, children = self._validate(list(edges), self.classes)

        self.root = next(n for n in children if n not in parent)
        internal: list[str] = []
        queue = deque([self.root])
        while queue:  # breadth-first order of the internal nodes
            node = queue.popleft()
            if children[node]:
                internal.append(node)
                queue.extend(children[node])
        self.nodes: list[str] = self.classes + internal
        self._index = {node: i for i, node in enumerate(self.nodes)}
        self._children = {node: list(kids) for node, kids in children.items()}

        n = len(self.nodes)
        self.parent_index = torch.tensor(
            [self._index[parent[node]] if node in parent else -1 for node in self.nodes], dtype=torch.long
        )
        depth = [0] * n
        for node in internal + self.classes:  # parents come before children in BFS order
            if node in parent:
                depth[self._index[node]] = depth[self._index[parent[node]]] + 1
        height = [0] * n
        for node in reversed(internal):  # children before parents
            height[self._index[node]] = 1 + max(height[self._index[k]] for k in children[node])
        self.depth = torch.tensor(depth, dtype=torch.long)
        self.height = torch.tensor(height, dtype=torch.long)

        membership = torch.zeros(n, self.num_classes, dtype=torch.bool)
        for c in range(self.num_classes):
            node = c
            while node >= 0:
                membership[node, c] = True
                node = int(self.parent_index[node])
        self.membership = membership

        # Deeper common ancestors overwrite shallower ones, so each pair ends with its LCA's height.
        distances = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)
        for node in sorted(range(n), key=lambda i: depth[i]):
            row = membership[node]
            distances[row.unsqueeze(1) & row.unsqueeze(0)] = height[node]
        self.distances = distances
        self.max_distance = int(distances.max())

    # ------------------------------------------------------------------ construction and checks
    @staticmethod
    def _validate(
        edges: list[tuple[str, str]], classes: list[str]
    ) -> tuple[dict[str, str], dict[str, list[str]]]:
        parent: dict[str, str] = {}
        children: dict[str, list[str]] = {}
        for p, c in edges:
            p, c = str(p), str(c)
            if p == c:
                raise HierarchyError(f"cycle: node {c!r} is its own parent")
            if c in parent:
                if parent[c] == p:
                    continue  # a repeated edge
                raise HierarchyError(f"node {c!r} has two parents: {parent[c]!r} and {p!r}")
            parent[c] = p
            children.setdefault(p, []).append(c)
            children.setdefault(c, [])
        if not children:
            raise HierarchyError("the hierarchy has no edges")
        roots = [node for node in children if node not in parent]
        reachable: set[str] = set()
        queue = deque(roots)
        while queue:
            node = queue.popleft()
            reachable.add(node)
            queue.extend(children[node])
        unreachable = [node for node in children if node not in reachable]
        if unreachable:  # every unreachable node has a parent, so following parents must loop
            node, seen = unreachable[0], []
            while node not in seen:
                seen.append(node)
                node = parent[node]
            loop = seen[seen.index(node) :] + [node]
            raise HierarchyError(f"cycle through node {node!r}: {' -> '.join(reversed(loop))}")
        if len(roots) > 1:
            raise HierarchyError(f"several roots: {', '.join(map(repr, roots))}; a hierarchy has one root")

        seen_classes: set[str] = set()
        for cls in classes:
            if cls in seen_classes:
                raise HierarchyError(f"class {cls!r} appears twice in the class list")
            seen_classes.add(cls)
            if cls not in children:
                raise HierarchyError(f"class {cls!r} is missing from the tree")
            if children[cls]:
                raise HierarchyError(
                    f"class {cls!r} is not a leaf: it has children {', '.join(map(repr, children[cls]))}"
                )
        for node, kids in children.items():
            if not kids and node not in seen_classes:
                raise HierarchyError(f"leaf {node!r} is not a class (not in the class list)")
        return parent, children

    @classmethod
    def from_edges(
        cls, edges: Iterable[tuple[str, str]], classes: Sequence[str], *, name: str = "custom"
    ) -> Hierarchy:
        """Build a hierarchy from ``(parent, child)`` name pairs.

        Args:
            edges: the tree's edges as (parent name, child name).
            classes: the class (leaf) names in label order: ``classes[k]`` is label k.

        Raises:
            HierarchyError: a node with two parents, a cycle, several roots, a class that is not a leaf,
                a leaf that is not a class, a class missing from the tree, a class listed twice; the
                message names the node.
        """
        return cls(edges, classes, name=name)

    @classmethod
    def from_nltk(cls, tree, classes: Sequence[str], *, name: str = "nltk") -> Hierarchy:
        """Build a hierarchy from an ``nltk.Tree``, the type of the making-better-mistakes code.

        Internal nodes are ``Tree`` objects named by ``label()``; leaves are plain strings (or
        childless ``Tree`` objects), as in that code's hierarchy pickles.

        Args:
            tree: an ``nltk.Tree``.
            classes: leaf names in label order (the tree carries no label order).

        Raises:
            HierarchyError: as :meth:`from_edges`.
        """
        import nltk

        edges: list[tuple[str, str]] = []

        def label(node) -> str:
            return str(node.label()) if isinstance(node, nltk.Tree) else str(node)

        stack = [tree]
        while stack:
            node = stack.pop()
            if isinstance(node, nltk.Tree):
                for child in node:
                    edges.append((label(node), label(child)))
                    stack.append(child)
        return cls(edges, classes, name=name)

    def to_nltk(self):
        """This tree as an ``nltk.Tree`` (internal nodes ``Tree(name, children)``, leaves strings).

        The children of each node keep their order in the source file.
        """
        import nltk

        def build(node: str):
            kids = self._children[node]
            return nltk.Tree(node, [build(k) for k in kids]) if kids else node

        return build(self.root)

    def distance_dict(self) -> dict[tuple[str, str], int]:
        """Pairwise class distances in the making-better-mistakes form ``{(class_a, class_b): d}``.

        Keys are name pairs sorted alphabetically, one per unordered pair, self-pairs included (0), which
        is what that code's symmetric ``DistanceDict`` looks up.
        """
        out: dict[tuple[str, str], int] = {}
        for i, a in enumerate(self.classes):
            for j in range(i, self.num_classes):
                key = tuple(sorted((a, self.classes[j])))
                out[key] = int(self.distances[i, j])  # type: ignore[index]
        return out

    # ------------------------------------------------------------------ queries
    def node_index(self, node: str) -> int:
        """Index of ``node`` in :attr:`nodes`; HierarchyError naming it if it is not in the tree."""
        try:
            return self._index[node]
        except KeyError:
            raise HierarchyError(f"node {node!r} is not in hierarchy {self.name!r}") from None

    def ancestors(self, node: str) -> list[str]:
        """Names of the ancestors of ``node``, from its parent up to the root (empty for the root)."""
        out: list[str] = []
        i = int(self.parent_index[self.node_index(node)])
        while i >= 0:
            out.append(self.nodes[i])
            i = int(self.parent_index[i])
        return out

    def children(self, node: str) -> list[str]:
        """Names of the children of ``node`` in file order (empty for a leaf)."""
        return list(self._children[self.nodes[self.node_index(node)]])

    def node_depth(self, node: str) -> int:
        """Depth of ``node`` in edges from the root."""
        return int(self.depth[self.node_index(node)])

    def distance(self, a: str, b: str) -> int:
        """LCA height between classes ``a`` and ``b`` (names)."""
        return int(self.distances[self.node_index(a), self.node_index(b)])

    @property
    def leaf_depths(self) -> torch.Tensor:
        """LongTensor [C]: depth of every class (edges from the root)."""
        return self.depth[: self.num_classes]

    @property
    def tree_height(self) -> int:
        """Height of the root: the depth of the deepest leaf."""
        return int(self.height[self.node_index(self.root)])

    def _ancestor_at(self, cls_index: int, level: int) -> int:
        node = cls_index
        while int(self.depth[node]) > level:
            node = int(self.parent_index[node])
        return node

    def coarse_labels(self, level: int) -> torch.Tensor:
        """Group of every class: its ancestor at depth ``level`` (edges from the root).

        A class whose leaf lies at depth ``level`` or shallower is its own group. Group ids follow the
        official CIFAR-100 coarse ids when the groups are exactly superclasses of a built-in tree
        (``cifar100-l5`` level 4, ``cifar100-coarse`` level 1); otherwise groups are numbered 0..G-1 in
        the order of the smallest class label they contain.

        Args:
            level: depth in edges from the root, 0 (everything in one group) .. the tree height.

        Returns:
            LongTensor [C] of group ids in 0..G-1.

        Raises:
            HierarchyError: if ``level`` is outside 0..tree height.
        """
        if not isinstance(level, int) or not 0 <= level <= self.tree_height:
            raise HierarchyError(
                f"level {level!r} is outside 0..{self.tree_height} for hierarchy {self.name!r}"
            )
        group_nodes = [self._ancestor_at(c, level) for c in range(self.num_classes)]
        names = {self.nodes[g] for g in group_nodes}
        if self._group_ids and names <= self._group_ids.keys():
            ids = sorted(self._group_ids[n] for n in names)
            if ids == list(range(len(ids))):
                return torch.tensor([self._group_ids[self.nodes[g]] for g in group_nodes], dtype=torch.long)
        numbering: dict[int, int] = {}
        for g in group_nodes:  # classes in label order: first occurrence = smallest label
            numbering.setdefault(g, len(numbering))
        return torch.tensor([numbering[g] for g in group_nodes], dtype=torch.long)

    @property
    def default_coarse_level(self) -> int | None:
        """The depth whose groups are the official CIFAR-100 superclasses, or None if none is.

        4 for ``cifar100-l5``, 1 for ``cifar100-coarse``, None for the WordNet trees and user trees.
        """
        if not self._group_ids:
            return None
        for level in range(1, self.tree_height + 1):
            names = {self.nodes[self._ancestor_at(c, level)] for c in range(self.num_classes)}
            if names <= self._group_ids.keys():
                return level
        return None

    # ------------------------------------------------------------------ display
    def format_tree(self) -> str:
        """The tree as indented text, one node per line (``--`` per level), leaves with their label."""
        lines: list[str] = []
        stack = [(self.root, 0)]
        while stack:
            node, level = stack.pop()
            idx = self._index[node]
            label = f"  [{idx}]" if idx < self.num_classes else ""
            lines.append(f"{'--' * level}{' ' if level else ''}{node}{label}")
            stack.extend((k, level + 1) for k in reversed(self._children[node]))
        return "\n".join(lines)

    def summary(self) -> str:
        """Statistics: node counts, height, histograms of leaf depths and of pairwise class distances."""
        c = self.num_classes
        depths = Counter(self.leaf_depths.tolist())
        iu = torch.triu_indices(c, c, offset=1)
        dist = Counter(self.distances[iu[0], iu[1]].tolist())
        return "\n".join(
            [
                f"hierarchy: {self.name}",
                f"nodes: {len(self.nodes)} ({c} classes/leaves, {len(self.nodes) - c} internal), "
                f"root: {self.root}",
                f"height: {self.tree_height}, largest distance: {self.max_distance}",
                "leaf depths: " + ", ".join(f"{d}: {n}" for d, n in sorted(depths.items())),
                f"distances over the {c * (c - 1) // 2} class pairs: "
                + ", ".join(f"{d}: {n}" for d, n in sorted(dist.items())),
            ]
        )

    def __repr__(self) -> str:
        return f"Hierarchy({self.name!r}, classes={self.num_classes}, nodes={len(self.nodes)})"


# ---------------------------------------------------------------------- loading
def _read_class_list(classes: Sequence[str] | str | Path) -> list[str]:
    if isinstance(classes, (str, Path)):
        path = Path(classes)
        if not path.is_file():
            raise HierarchyError(f"class list file {str(path)!r} does not exist")
        return [fields[0] for _, fields in _content_lines(path.read_text(encoding="utf-8"))]
    return [str(c) for c in classes]


def _parse_edges(text: str, source: str) -> list[tuple[str, str]]:
    edges = []
    for number, fields in _content_lines(text):
        if len(fields) != 2:
            raise HierarchyError(f"{source}:{number}: expected 'parent child', got {' '.join(fields)!r}")
        edges.append((fields[0], fields[1]))
    return edges


def _builtin(name: str) -> Hierarchy:
    edges = _parse_edges(_package_text(f"{name}.txt"), name)
    group_ids = {n: k for k, n in enumerate(CIFAR100_SUPERCLASSES)}
    return Hierarchy(edges, CIFAR100_CLASSES, name=name, group_ids=group_ids)


def _register_builtins() -> None:
    def factory(name: str):
        def make() -> Hierarchy:
            return _builtin(name)

        make.__doc__ = f"The built-in {name} hierarchy over CIFAR-100's classes."
        return make

    for builtin in BUILTIN_HIERARCHIES:
        HIERARCHIES.register(builtin)(factory(builtin))


_register_builtins()


def load_hierarchy(
    name_or_path: str | Path = DEFAULT_HIERARCHY,
    classes: Sequence[str] | str | Path | None = None,
    *,
    names: str | Path | None = None,
    trust_pickle: bool = False,
) -> Hierarchy:
    """Load a built-in hierarchy by name, or a user file.

    Built-in names: ``cifar100-l5`` (default), ``cifar100-coarse``, ``cifar100-wordnet``,
    ``cifar100-wordnet-otter``; their classes are always in the official CIFAR-100 label order.

    A user file holds one ``parent child`` edge per line (``#`` starts a comment), with node names or
    integer node ids as in cvjena/semantic-embeddings. With integer ids, ``names`` may give a file of
    ``id name`` lines that names the nodes. The label order is never guessed:

    * ``classes`` (a list of names, or a file with one name per line) gives it when passed;
    * otherwise integer leaf ids that are exactly 0..C-1 are their own labels;
    * otherwise HierarchyError.

    A ``.pkl``/``.pickle`` file (an ``nltk.Tree`` as saved by the making-better-mistakes code) is only
    unpickled with ``trust_pickle=True``, since unpickling runs arbitrary code.

    Returns:
        the validated :class:`Hierarchy`.

    Raises:
        HierarchyError: unknown name or missing file, malformed line, unknown label order, refused
            pickle, or an invalid tree (see :meth:`Hierarchy.from_edges`).
    """
    key = str(name_or_path)
    if key in BUILTIN_HIERARCHIES and not Path(key).exists():
        if classes is not None:
            raise HierarchyError(f"built-in hierarchy {key!r} has a fixed class order; do not pass classes")
        return _builtin(key)
    path = Path(key)
    if not path.is_file():
        raise HierarchyError(
            f"unknown hierarchy {key!r}: not a built-in ({', '.join(BUILTIN_HIERARCHIES)}) and no such file"
        )
    if path.suffix in (".pkl", ".pickle"):
        if not trust_pickle:
            raise HierarchyError(
                f"refusing to unpickle {key!r}: pickles can run arbitrary code. If you trust its source, "
                "pass trust_pickle=True (--trust-pickle on the command line); Hierarchy.to_nltk / "
                "format_tree and a 'parent child' text file avoid pickles altogether"
            )
        with path.open("rb") as f:
            tree = pickle.load(f)
        if classes is None:
            raise HierarchyError(
                f"{key!r}: an nltk tree carries no label order; pass classes "
                "(--classes FILE on the command line)"
            )
        return Hierarchy.from_nltk(tree, _read_class_list(classes), name=key)

    edges = _parse_edges(path.read_text(encoding="utf-8"), key)
    nodes = {n for edge in edges for n in edge}
    integer_ids = all(n.lstrip("-").isdigit() for n in nodes)
    if names is not None:
        if not integer_ids:
            raise HierarchyError(f"{key!r}: a names file needs integer node ids in the edge file")
        if not Path(names).is_file():
            raise HierarchyError(f"names file {str(names)!r} does not exist")
        id_to_name: dict[str, str] = {}
        for number, fields in _content_lines(Path(names).read_text(encoding="utf-8")):
            if len(fields) < 2:
                raise HierarchyError(f"{names}:{number}: expected 'id name', got {' '.join(fields)!r}")
            id_to_name[str(int(fields[0]))] = fields[1]
        missing = sorted((n for n in nodes if str(int(n)) not in id_to_name), key=int)
        if missing:
            raise HierarchyError(f"node {missing[0]!r} has no name in {str(names)!r}")
        rename = {n: id_to_name[str(int(n))] for n in nodes}
    else:
        rename = {n: str(int(n)) for n in nodes} if integer_ids else {n: n for n in nodes}
    edges = [(rename[p], rename[c]) for p, c in edges]

    if classes is not None:
        class_list = _read_class_list(classes)
    elif integer_ids:
        parents = {p for p, _ in edges}
        leaf_ids = sorted(int(n) for n in nodes if rename[n] not in parents)
        if leaf_ids != list(range(len(leaf_ids))):
            raise HierarchyError(
                f"{key!r}: integer leaf ids are not 0..{len(leaf_ids) - 1} (e.g. {leaf_ids[-1]}), so they "
                "cannot be labels; pass classes (--classes FILE on the command line) to give the label order"
            )
        by_id = {int(n): rename[n] for n in nodes}
        class_list = [by_id[i] for i in leaf_ids]
    else:
        raise HierarchyError(
            f"{key!r}: the label order of its classes is unknown; pass classes (a list of names, or a file "
            "with one class name per line: --classes FILE on the command line), or use integer leaf ids "
            "0..C-1. For training on CIFAR-100, leaves named by the official class names need no order."
        )
    return Hierarchy(edges, class_list, name=key)


def load_cifar100_hierarchy(name_or_path: str | Path = DEFAULT_HIERARCHY) -> Hierarchy:
    """A hierarchy over CIFAR-100's classes, in the label order of the data, for training and scoring.

    The label order is the data's, so nothing is guessed: a built-in name loads as usual; a user file
    with integer leaf ids 0..99 uses them as labels; a user file with names must have exactly the 100
    official class names as leaves (``apple`` ... ``worm``), which map to their official labels.

    Raises:
        HierarchyError: unknown name or missing file, an invalid tree, or leaves that are not CIFAR-100's
            classes (the message names the first unknown or missing class).
    """
    key = str(name_or_path)
    if key in BUILTIN_HIERARCHIES and not Path(key).exists():
        return _builtin(key)
    path = Path(key)
    if not path.is_file() or path.suffix in (".pkl", ".pickle"):
        return load_hierarchy(path)  # raises the usual clear error
    edges = _parse_edges(path.read_text(encoding="utf-8"), key)
    nodes = {n for edge in edges for n in edge}
    if all(n.lstrip("-").isdigit() for n in nodes):
        h = load_hierarchy(path)
    else:
        leaves = nodes - {p for p, _ in edges}
        unknown = sorted(leaves - set(CIFAR100_CLASSES))
        if unknown:
            raise HierarchyError(
                f"{key!r}: leaf {unknown[0]!r} is not a CIFAR-100 class name; a named tree for CIFAR-100 "
                "must have the 100 official class names as leaves (or use integer ids 0..99)"
            )
        h = load_hierarchy(path, classes=CIFAR100_CLASSES)
    if h.num_classes != len(CIFAR100_CLASSES):
        raise HierarchyError(f"{key!r} has {h.num_classes} classes; CIFAR-100 needs 100")
    return h


# ---------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> None:
    """``python -m hiercls.hierarchy show NAME_OR_PATH``: print a tree and its statistics."""
    parser = argparse.ArgumentParser(prog="python -m hiercls.hierarchy", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="print the tree and its statistics")
    show.add_argument("hierarchy", nargs="?", default=DEFAULT_HIERARCHY,
                      help=f"built-in name ({', '.join(BUILTIN_HIERARCHIES)}) or a 'parent child' file")
    show.add_argument("--classes", help="file with one class name per line, in label order")
    show.add_argument("--names", help="'id name' file for a tree with integer node ids")
    show.add_argument("--trust-pickle", action="store_true",
                      help="allow a pickled nltk tree (unpickling runs code: only for files you trust)")
    show.add_argument("--no-tree", action="store_true", help="print only the statistics")
    args = parser.parse_args(argv)
    try:
        h = load_hierarchy(args.hierarchy, args.classes, names=args.names, trust_pickle=args.trust_pickle)
    except HierarchyError as err:
        parser.error(str(err))
    if not args.no_tree:
        print(h.format_tree())
        print()
    print(h.summary())


if __name__ == "__main__":
    main()
