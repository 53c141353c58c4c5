"""Column layout: a network too tall for a page is cut into side-by-side columns.

Decided before `dot` runs, from average box sizes, so the DOT text stays a pure function
of the graph.
"""

from __future__ import annotations

from nnspec.backends.graphviz.view import Edge, View

# A long network is cut into columns so that it fits this page (inches, inside margins) at
# this scale or better. The sizes below are averages measured on rendered diagrams.
_PAGE = (10.0, 7.5)
_READABLE_SCALE = 0.75
_MAX_COLUMNS = 8
_MAX_WRAPPED_UNITS = 2000  # past this many top-level boxes, columns cannot make a page
_MIN_COLUMN_SHARE = 0.3  # no column shorter than this share of the tallest
_RANK_INCHES, _BOX_INCHES, _CLUSTER_INCHES, _TITLE_INCHES = 0.8, 1.8, 1.0, 1.0
_RANK_INCHES_LR, _BOX_INCHES_LR, _CLUSTER_INCHES_LR = 2.4, 0.8, 0.3
# Edges that pass through one rank without stopping: past a few dozen, `dot`'s crossing
# minimisation takes seconds to hours (one input added into 70 nested sums: 1 s; 100: 13 s;
# 500: over 12 minutes). Measured with Graphviz 2.43 on a 2-core machine.
_MAX_PASSING = 24


def _columns(heights: list[float], limit: float) -> list[int]:
    """Greedy cut of unit heights, in order, into columns no taller than `limit`."""
    out, column, filled = [], 0, 0.0
    for h in heights:
        if filled and filled + h > limit + 1e-9:
            column, filled = column + 1, 0.0
        out.append(column)
        filled += h
    return out


def _balanced_columns(heights: list[float], n: int) -> list[int]:
    """Units cut into at most n columns in order, the tallest column as short as possible.

    The fewest columns the greedy cut needs falls as the limit grows, so the limit is found
    by bisection between the tallest unit and the whole height: linear work per step (the
    limits worth trying are every sum of a run of units: quadratic in a 100,000-box graph).
    """
    low, high = max(heights), sum(heights)
    for _ in range(64):
        if high - low <= 1e-9 * high:
            break
        mid = (low + high) / 2
        if _columns(heights, mid)[-1] < n:
            high = mid
        else:
            low = mid
    return _columns(heights, high)


def _page_scale(columns: list[int], heights: list[float], rows: list[dict[int, int]],
                lr: bool) -> float:
    """How much the picture must shrink to fit the page, upright or sideways (1: not at all).

    `rows[i]` counts unit i's boxes on each rank: the widest rank of a column sets its width.
    """
    count = columns[-1] + 1
    along = max(sum(h for h, c in zip(heights, columns) if c == k) for k in range(count))
    across = 0
    for k in range(count):
        per_rank: dict[int, int] = {}
        for unit_rows, c in zip(rows, columns):
            if c == k:
                for rank, boxes in unit_rows.items():
                    per_rank[rank] = per_rank.get(rank, 0) + boxes
        across += max(per_rank.values())
    across *= _BOX_INCHES_LR if lr else _BOX_INCHES
    w, h = (along, across + _TITLE_INCHES) if lr else (across, along + _TITLE_INCHES)
    return max(min(a / w, b / h, 1.0) for a, b in (_PAGE, _PAGE[::-1]))


def wrap_columns(view: View, lr: bool) -> list[tuple[str, str]]:
    """Lay a tall network out in side-by-side columns; return the connectors to draw.

    A ResNet is ~30 boxes tall; in one column it needs a 30-inch page. Its top-level
    sequence (never the inside of a block) is cut into as few columns as make the picture
    fit a page at a readable scale. An edge that would cross to another column ends in a
    lettered circle at the bottom of its column and starts again from the same letter at
    the top of the next, as off-page connectors do in flow charts. Returns (id, letter).
    """
    unit_of = {key: (item.clusters[0] if item.clusters else key)
               for key, item in view.items.items()}
    units = list(dict.fromkeys(unit_of.values()))
    if len(units) > _MAX_WRAPPED_UNITS:
        return []  # no page holds it at any scale: one column, and linear work
    rank = {**dict.fromkeys(view.items, 0), **_longest_paths(view.edges)}
    rows: dict[str, dict[int, int]] = {u: {} for u in units}
    clusters: dict[str, set[str]] = {u: set() for u in units}
    for key, unit in unit_of.items():
        rows[unit][rank[key]] = rows[unit].get(rank[key], 0) + 1
        clusters[unit].update(view.items[key].clusters)
    rank_inches, cluster_inches = ((_RANK_INCHES_LR, _CLUSTER_INCHES_LR) if lr
                                   else (_RANK_INCHES, _CLUSTER_INCHES))
    heights, reached = [], -1  # a unit adds the ranks it reaches below those before it
    for u in units:
        deepest = max(rows[u])
        heights.append(max(deepest - reached, 0) * rank_inches + len(clusters[u]) * cluster_inches)
        reached = max(reached, deepest)
    unit_rows = [rows[u] for u in units]
    best, best_scale = [0] * len(units), 0.0
    for n in range(1, min(len(units), _MAX_COLUMNS) + 1):
        if best_scale >= _READABLE_SCALE:
            break
        columns = _balanced_columns(heights, n)
        tall = [sum(h for h, c in zip(heights, columns) if c == k) for k in range(columns[-1] + 1)]
        if min(tall) < _MIN_COLUMN_SHARE * max(tall):
            continue  # a stub column (the tail of a tall block) reads worse than no wrapping
        scale = _page_scale(columns, heights, unit_rows, lr)
        if scale > best_scale + 0.05:  # another column must earn its place
            best, best_scale = columns, scale
    column_of = dict(zip(units, best))
    connectors: list[tuple[str, str]] = []
    letter_of: dict[tuple[str, str], str] = {}  # one connector per source and port
    edges = []
    for e in view.edges:
        if column_of[unit_of[e.src]] == column_of[unit_of[e.dst]]:
            edges.append(e)
            continue
        if (e.src, e.port) not in letter_of:
            letter = letter_of[e.src, e.port] = _connector_letter(len(letter_of))
            connectors += [(f"@{letter}.out", letter), (f"@{letter}.in", letter)]
            edges.append(Edge(e.src, f"@{letter}.out", e.type, e.skip, port=e.port))
        edges.append(Edge(f"@{letter_of[e.src, e.port]}.in", e.dst, e.type, e.skip, e.label,
                          e.port, e.shape_only))
    view.edges = edges
    return connectors


def cut_long_edges(view: View, connectors: list[tuple[str, str]]) -> None:
    """Draw edges longer than some number of ranks as lettered connectors, the number
    chosen as the largest that leaves no rank with too many edges passing through.

    A source feeding many far-away layers (`x + (x + (x + ...)))`) makes `dot` route every
    edge through every rank between: the layout time explodes (see `_MAX_PASSING`). Each cut
    edge leaves its source into a lettered circle and arrives from a copy of the letter
    just above its layer, as the column connectors do. Ordinary networks (residual skips,
    U-Net's bridges) stay far below the limit and are drawn as before. Linear work per
    length tried (counts by difference arrays), a logarithmic number of lengths.
    """
    rank = _longest_paths(view.edges)
    spans = [rank[e.dst] - rank[e.src] for e in view.edges]
    longest = max(spans, default=0)
    if _most_passing(view.edges, spans, rank, longest) <= _MAX_PASSING:
        return
    kept, cut = 1, longest  # edges of `kept` ranks are fine; of `cut`, too many pass
    while cut - kept > 1:
        middle = (kept + cut) // 2
        if _most_passing(view.edges, spans, rank, middle) <= _MAX_PASSING:
            kept = middle
        else:
            cut = middle
    letters = {letter for _, letter in connectors}
    arrivals = {letter: sum(1 for node_id, seen in connectors
                            if seen == letter and node_id.endswith(".in")) for letter in letters}
    letter_of: dict[tuple[str, str], str] = {}
    edges = []
    for e, span in zip(view.edges, spans):
        if span <= kept:
            edges.append(e)
            continue
        letter = _letter_of_arrival(e.src)
        if letter is None:
            if (e.src, e.port) not in letter_of:
                letter = letter_of[e.src, e.port] = _connector_letter(len(letters))
                letters.add(letter)
                connectors.append((f"@{letter}.out", letter))
                edges.append(Edge(e.src, f"@{letter}.out", e.type, e.skip, port=e.port))
            letter = letter_of[e.src, e.port]
        arrivals[letter] = arrivals.get(letter, 0) + 1
        arrival = f"@{letter}.in{arrivals[letter]}"
        connectors.append((arrival, letter))
        edges.append(Edge(arrival, e.dst, e.type, e.skip, e.label, e.port, e.shape_only))
    view.edges = edges


def _most_passing(edges: list[Edge], spans: list[int], rank: dict[str, int],
                  longest: int) -> int:
    """The most edges of at most `longest` ranks that pass through one rank."""
    starts = [0] * (max(rank.values(), default=0) + 2)
    for e, span in zip(edges, spans):
        if 1 < span <= longest:
            starts[rank[e.src] + 1] += 1
            starts[rank[e.dst]] -= 1
    most = passing = 0
    for change in starts:
        passing += change
        most = max(most, passing)
    return most


def _letter_of_arrival(node_id: str) -> str | None:
    """The letter of a connector's arrival circle: a cut edge from it gets another copy."""
    if node_id.startswith("@") and ".in" in node_id:
        return node_id[1:node_id.index(".in")]
    return None


def _longest_paths(edges: list[Edge]) -> dict[str, int]:
    """Each node's rank as `dot` would first place it: the longest path from a source."""
    successors: dict[str, list[str]] = {}
    indegree: dict[str, int] = {}
    for e in edges:
        successors.setdefault(e.src, []).append(e.dst)
        successors.setdefault(e.dst, [])
        indegree[e.dst] = indegree.get(e.dst, 0) + 1
        indegree.setdefault(e.src, 0)
    rank = dict.fromkeys(successors, 0)
    ready = [node for node, n in indegree.items() if n == 0]
    while ready:
        node = ready.pop()
        for nxt in successors[node]:
            rank[nxt] = max(rank[nxt], rank[node] + 1)
            indegree[nxt] -= 1
            if not indegree[nxt]:
                ready.append(nxt)
    return rank


def _connector_letter(index: int) -> str:
    letters = "ABCDEFGHJKLMNPQRSTUVWXYZ"  # no I or O: they read as 1 and 0
    cycle, i = divmod(index, len(letters))
    return letters[i] + (str(cycle + 1) if cycle else "")
