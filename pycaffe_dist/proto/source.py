"""Where things are in a prototxt file, so errors can say file:line:col.

Protobuf's text parser keeps no positions once it succeeds, so this module
tokenizes the text once more and records, for every top-level `layer` /
`layers` block, the position of the block and of each of its fields.
"""
import re

_TOKEN = re.compile(r"""
    (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<word>[A-Za-z_][A-Za-z0-9_.]*|[-+]?[0-9][A-Za-z0-9_.+-]*)
  | (?P<punct>[{}<>:\[\],;])
  | (?P<space>\s+)
  | (?P<other>.)
""", re.VERBOSE)


def tokens(text):
    """Yield (kind, value, line, col); lines and columns count from 1."""
    line, line_start = 1, 0
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        value = m.group()
        if kind not in ("space", "comment"):
            yield kind, value, line, m.start() - line_start + 1
        newlines = value.count("\n")
        if newlines:
            line += newlines
            line_start = m.start() + value.rfind("\n") + 1


class SourceMap:
    """Positions of layers and their fields in one text file."""

    def __init__(self, filename, text=""):
        self.filename = filename
        self.layers = []   # one dict per top-level layer block
        self.fields = {}   # top-level field name -> [(line, col)]
        if text:
            self._scan(text)

    def _scan(self, text):
        depth = 0
        current = None   # the layer block being read
        pending = None   # (word, line, col): a word that may name a field
        want_name = False
        for kind, value, line, col in tokens(text):
            if want_name:
                want_name = False
                if kind == "string" and current is not None and "=" not in current:
                    current["="] = value[1:-1]
                    continue
            if pending is not None:
                word, wline, wcol = pending
                pending = None
                if value in (":", "{", "<"):
                    self._record(word, depth, value, (wline, wcol))
                    current = self._current
                    if value == ":":
                        want_name = depth == 1 and word == "name"
                        continue
            if kind == "word":
                pending = (value, line, col)
            elif value in ("{", "<"):
                depth += 1
            elif value in ("}", ">"):
                depth -= 1
                if depth == 0:
                    current = self._current = None

    _current = None

    def _record(self, word, depth, opener, spot):
        if depth == 0:
            self.fields.setdefault(word, []).append(spot)
            if word in ("layer", "layers") and opener != ":":
                self._current = {"_": spot}
                self.layers.append(self._current)
        elif depth == 1 and self._current is not None:
            self._current.setdefault(word, []).append(spot)

    def layer(self, name, field=None, occurrence=0):
        """file:line:col of the layer called `name`, or of one of its fields."""
        for index, entry in enumerate(self.layers):
            if entry.get("=") == name:
                return self.layer_index(index, field, occurrence)
        return self.filename

    def layer_index(self, index, field=None, occurrence=0):
        """file:line:col of layer number `index` (in file order), or of one of its fields."""
        if index is None or index >= len(self.layers):
            return self.filename
        entry = self.layers[index]
        spots = entry.get(field) if field else None
        line, col = spots[occurrence] if spots and occurrence < len(spots) else entry["_"]
        return "%s:%d:%d" % (self.filename, line, col)

    def field(self, name, occurrence=0):
        spots = self.fields.get(name)
        if not spots or occurrence >= len(spots):
            return self.filename
        return "%s:%d:%d" % (self.filename, *spots[occurrence])
