#!/usr/bin/env python3
"""CaseOps v1: a lossless case transform applied to text before tokenizing (the public records'
"lossless_caps_caseops_v1"), so that the tokenizer never sees an ASCII capital letter.

Over maximal runs of ASCII letters [A-Za-z]: a lowercase run stays; an all-uppercase run of two or
more letters becomes ALLCAPS + the run lowercased; a capitalised run ("Word", "A") becomes TITLE +
the run lowercased; any other run gets TITLE if its first letter is uppercase, and CAPNEXT before
each later uppercase letter, every letter lowercased ("iPhone" -> "i" CAPNEXT "phone"). An operator
character found in the input is escaped as ESC + itself. Everything else is left as it is.
The operators are private-use characters: TITLE U+E001, ALLCAPS U+E002, CAPNEXT U+E003, ESC U+E004.

    python3 data/caseops.py encode < original.txt > transformed.txt
    python3 data/caseops.py decode < transformed.txt > original.txt

decode() inverts encode() exactly and refuses text that no encoding (or SentencePiece's NFKC
normalisation of one) can produce. byte_sidecar() gives, per token of a CaseOps-encoded document,
how many bytes of the original text it stands for: the denominator of bits per byte.
"""
from __future__ import annotations

import re
import sys

import numpy as np

NAME = "caseops_v1"  # manifest.json "text_transform"; the records call it lossless_caps_caseops_v1
TITLE, ALLCAPS, CAPNEXT, ESC = "\ue001", "\ue002", "\ue003", "\ue004"
OPERATORS = (TITLE, ALLCAPS, CAPNEXT, ESC)
OPERATOR_NAMES = dict(zip(OPERATORS, ("TITLE", "ALLCAPS", "CAPNEXT", "ESC")))
USER_DEFINED = 4  # SentencePiece's piece type USER_DEFINED (sentencepiece_model.proto)


class CaseOpsError(ValueError):
    """Text that is not a CaseOps encoding."""


# ---------------------------------------------------------------- the transform

# An operator character, or a maximal letter run holding an uppercase letter.
_ENCODE = re.compile("[\ue001-\ue004]|(?<![A-Za-z])(?=[a-z]*[A-Z])[A-Za-z]+")
_UPPER = re.compile("[A-Z]")
# ESC + operator, TITLE + letter, CAPNEXT + letter after a letter, ALLCAPS + lowercase run; else a stray operator.
_DECODE = re.compile("\ue004[\ue001-\ue004]|\ue001[a-z]|(?<=[A-Za-z])\ue003[a-z]|\ue002[a-z]+|[\ue001-\ue004]")


def _encode_match(match: re.Match) -> str:
    run = match.group()
    if run in OPERATORS:
        return ESC + run
    if len(run) > 1 and run.isupper():
        return ALLCAPS + run.lower()
    if len(run) == 1 or run[1:].islower():  # the run holds a capital: here it is the first letter
        return TITLE + run.lower()
    head = TITLE if run[0] <= "Z" else ""
    return head + run[0].lower() + _UPPER.sub(CAPNEXT + r"\g<0>", run[1:]).lower()


def encode(text: str) -> str:
    """The CaseOps v1 form of text: no ASCII capital left, operators escaped."""
    return _ENCODE.sub(_encode_match, text)


def decode(text: str, strict: bool = True) -> str:
    """The original of CaseOps text: decode(encode(x)) == x for every string x; CaseOpsError (a ValueError)
    for text that is not CaseOps.

    Refused: a dangling ESC or one before a non-operator, TITLE/ALLCAPS/CAPNEXT not followed by a
    lowercase ASCII letter, CAPNEXT not preceded by a letter. Accepted although encode() never writes
    them, since SentencePiece's normalisation makes them from its output (a fullwidth or compatibility
    character becomes ASCII, a control character is deleted): uppercase ASCII letters (kept), and
    TITLE/ALLCAPS right after a letter. strict=False drops operators with nothing to act on instead
    of refusing: every operator acting as one is then dropped, exactly the bytes byte_sidecar weighs 0."""
    def replace(match: re.Match) -> str:
        found = match.group()
        if len(found) > 1:
            return found[1] if found[0] == ESC else found[1:].upper()
        if not strict:
            return ""
        at, after = match.start(), text[match.start() + 1:match.start() + 2]
        name = OPERATOR_NAMES[found]
        if found == ESC:
            what = "ends the text" if not after else f"is followed by {after!r}, not an operator"
        elif found == CAPNEXT and "a" <= after <= "z":
            what = "is not preceded by an ASCII letter"
        else:
            what = f"is followed by {after!r}, not a lowercase ASCII letter" if after else "ends the text"
        raise CaseOpsError(f"not CaseOps text: {name} (U+{ord(found):04X}) at character {at} {what}")
    return _DECODE.sub(replace, text)


# ---------------------------------------------------------------- tokenizers

def _piece_types(model: bytes) -> dict[str, int]:
    """piece -> type of a serialized SentencePiece ModelProto (field 1: pieces; in each, 1 piece, 3 type)."""
    def fields(buf: bytes):
        i = 0
        while i < len(buf):
            key, i = _varint(buf, i)
            kind = key & 7
            if kind == 0:
                value, i = _varint(buf, i)
            elif kind == 2:
                size, i = _varint(buf, i)
                value, i = buf[i:i + size], i + size
            elif kind in (1, 5):
                value, i = None, i + (8 if kind == 1 else 4)
            else:
                raise ValueError(f"unexpected protobuf wire type {kind}")
            yield key >> 3, value

    types = {}
    for number, value in fields(model):
        if number == 1:
            entry = dict(fields(value))
            types[entry.get(1, b"").decode("utf-8", "replace")] = entry.get(3, 1)  # absent type = NORMAL
    return types


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if byte < 0x80:
            return value, i


def reserved_pieces_problem(sp) -> str | None:
    """None when the SentencePiece model sp has every operator as a user-defined piece (always one
    token, never merged), else why not."""
    types = _piece_types(sp.serialized_model_proto())
    missing = [f"U+{ord(op):04X} ({OPERATOR_NAMES[op]})" for op in OPERATORS if types.get(op) != USER_DEFINED]
    if not missing:
        return None
    return (f"it lacks user-defined pieces for the CaseOps operators {', '.join(missing)}; use a tokenizer "
            f"trained on CaseOps text with them as user_defined_symbols (data/build_dataset.py --caseops)")


def _piece_table(sp):
    """Per id: UTF-8 bytes as decoded (byte piece: its byte; control/unknown/unused: none; else '▁' -> ' '),
    flattened, with offsets, lengths and whether the piece starts with '▁'."""
    table = getattr(sp, "_caseops_piece_table", None)
    if table is not None:
        return table
    pieces = []
    for i in range(sp.vocab_size()):
        piece = sp.id_to_piece(i)
        if sp.is_byte(i):
            pieces.append(bytes([int(piece[3:5], 16)]))
        elif sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            pieces.append(b"")
        else:
            pieces.append(piece.replace("\u2581", " ").encode())
    lengths = np.array([len(p) for p in pieces], dtype=np.int64)
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    lead = np.array([p[:1] == b" " and not sp.is_byte(i) for i, p in enumerate(pieces)], dtype=np.int64)
    table = (np.frombuffer(b"".join(pieces) + b"\0", dtype=np.uint8), offsets, lengths, lead)
    try:
        sp._caseops_piece_table = table
    except AttributeError:
        pass
    return table


def byte_sidecar(sp, ids) -> np.ndarray:
    """For ONE document's token ids (without its BOS): how many bytes of the original text each token
    stands for (uint16). A token's bytes are those of its piece as decoded (a leading '▁' dropped for
    the document's first token); of the document's text, every byte of an operator acting as one
    weighs 0, every other byte 1. The sum is len(decode(text, strict=False).encode())."""
    return stream_sidecar(sp, np.asarray(ids, dtype=np.int64).reshape(-1), bos_id=None)


def stream_sidecar(sp, tokens, bos_id: int | None, chunk_tokens: int = 1 << 20) -> np.ndarray:
    """byte_sidecar of every document of a token stream in which each document starts with bos_id
    (None: the stream is one document); BOS entries are 0. Vectorised, in chunks cut at documents."""
    tokens = np.asarray(tokens)
    out = np.zeros(len(tokens), dtype=np.uint16)
    if len(tokens) and not 0 <= int(tokens.min()) <= int(tokens.max()) < sp.vocab_size():
        raise ValueError(f"token ids {int(tokens.min())}..{int(tokens.max())} are not all ids of the tokenizer's "
                         f"{sp.vocab_size()} pieces")
    cuts = [0]
    if bos_id is not None:
        starts = np.flatnonzero(tokens == bos_id)
        for k in np.searchsorted(starts, np.arange(chunk_tokens, len(tokens), chunk_tokens)).tolist():
            if k < len(starts) and starts[k] > cuts[-1]:
                cuts.append(int(starts[k]))
    cuts.append(len(tokens))
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        counts = _sidecar_chunk(sp, tokens[lo:hi].astype(np.int64), bos_id)
        if len(counts) and counts.max() > 0xFFFF:
            raise ValueError(f"a token stands for {counts.max()} bytes, more than uint16 holds")
        out[lo:hi] = counts
    return out


def _sidecar_chunk(sp, tokens: np.ndarray, bos_id: int | None) -> np.ndarray:
    flat, offsets, lengths, lead = _piece_table(sp)
    first = np.zeros(len(tokens), dtype=bool)  # a document's first token: after BOS, or the chunk's first
    if len(tokens):
        first[0] = bos_id is None or tokens[0] != bos_id
        if bos_id is not None:
            first[1:] = tokens[:-1] == bos_id
    drop = first * lead[tokens]
    size = lengths[tokens] - drop
    ends = np.cumsum(size)
    begins = ends - size
    data = flat[np.repeat(offsets[tokens] + drop - begins, size) + np.arange(int(ends[-1]) if len(ends) else 0)]
    weight = np.ones(len(data) + 2, dtype=np.int64)
    lead_bytes = np.flatnonzero(data[:-2] == 0xEE)  # operators are EE 80 81..84 in UTF-8
    ops = lead_bytes[(data[lead_bytes + 1] == 0x80) & (data[lead_bytes + 2] >= 0x81) & (data[lead_bytes + 2] <= 0x84)]
    for k in range(3):
        weight[ops + k] = 0
    escapes = ops[data[ops + 2] == 0x84]
    if len(escapes):  # rare: a literal operator in the text; ESC escapes the next character of its document
        doc_start = np.zeros(len(data) + 3, dtype=bool)
        doc_start[begins[first]] = True
        op_at = set(ops.tolist())
        literal, acting_end = [], -1
        for p in escapes.tolist():
            if p == acting_end and not doc_start[p]:  # this ESC is itself escaped
                literal.append(p)
                acting_end = -1
                continue
            acting_end = p + 3
            if acting_end in op_at and not doc_start[acting_end] and data[acting_end + 2] != 0x84:
                literal.append(acting_end)
        for k in range(3):
            weight[np.array(literal, dtype=np.int64) + k] = 1
    cumulative = np.concatenate(([0], np.cumsum(weight[:len(data)])))
    return cumulative[ends] - cumulative[begins]


# ---------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv in (["-h"], ["--help"]):
        print(__doc__.strip())
        return 0
    if len(argv) != 1 or argv[0] not in ("encode", "decode"):
        print(f"caseops.py: error: expected one argument, encode or decode (got {' '.join(argv) or 'none'}); "
              f"text is read from stdin, written to stdout (see --help)", file=sys.stderr)
        return 2
    text = sys.stdin.buffer.read().decode("utf-8", "surrogateescape")
    try:
        out = encode(text) if argv[0] == "encode" else decode(text)
    except CaseOpsError as e:
        print(f"caseops.py: error: {e}", file=sys.stderr)
        return 2
    sys.stdout.buffer.write(out.encode("utf-8", "surrogateescape"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
