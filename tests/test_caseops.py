"""CaseOps (data/caseops.py): the transform against golden outputs and a per-character reference, its
inverse and what the inverse refuses, the byte sidecar against an independent count, and the honesty
check: the same text built with and without --caseops divides the loss by the same number of bytes."""
import importlib.util
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("build_dataset", REPO / "data" / "build_dataset.py")
bd = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bd)
caseops = bd.caseops

T, A, C, E = "\ue001", "\ue002", "\ue003", "\ue004"
OPS = (T, A, C, E)


def reference_encode(text: str) -> str:
    """The rules written out character by character (no regular expressions)."""
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch in OPS:
            out += [E, ch]
            i += 1
            continue
        if not ("a" <= ch <= "z" or "A" <= ch <= "Z"):
            out.append(ch)
            i += 1
            continue
        j = i
        while j < len(text) and ("a" <= text[j] <= "z" or "A" <= text[j] <= "Z"):
            j += 1
        run, upper = text[i:j], ["A" <= c <= "Z" for c in text[i:j]]
        if not any(upper):
            out.append(run)
        elif all(upper) and len(run) >= 2:
            out.append(A + run.lower())
        elif upper[0] and not any(upper[1:]):
            out.append(T + run.lower())
        else:
            out.append((T if upper[0] else "") + run[0].lower())
            for c, up in zip(run[1:], upper[1:]):
                out.append((C if up else "") + c.lower())
        i = j
    return "".join(out)


GOLDEN = [
    ("", ""),
    ("hello world", "hello world"),
    ("The NASA Launch", f"{T}the {A}nasa {T}launch"),
    ("iPhone OpenAI", f"i{C}phone {T}open{C}a{C}i"),
    ("McDonald", f"{T}mc{C}donald"),
    ("NASA's", f"{A}nasa's"),
    ("I am A", f"{T}i am {T}a"),
    ("ABc aBC HTTPServer", f"{T}a{C}bc a{C}b{C}c {T}h{C}t{C}t{C}p{C}s" + "erver"),
    ("ABC123DEF x9Y", f"{A}abc123{A}def x9{T}y"),
    (f"x{T}y", f"x{E}{T}y"),
    (f"{E}{E}{A}", f"{E}{E}{E}{E}{E}{A}"),
    ("\ue000 \ue005 \uf8ff", "\ue000 \ue005 \uf8ff"),  # other private-use characters stay
    ("ÀBC Éric éRIC", f"À{A}bc Éric é{A}ric"),  # non-ASCII letters end a run and are never touched
    ("ДЖ Ωμέγα ΑΒΓ", "ДЖ Ωμέγα ΑΒΓ"),
    ("Straße ﬁ ＡＢＣ", f"{T}straße ﬁ ＡＢＣ"),
    ("A\u0301B\u0308", f"{T}a\u0301{T}b\u0308"),  # combining marks after ASCII capitals
    ("Hi 😀 OK\U0001F600ok", f"{T}hi 😀 {A}ok\U0001F600ok"),
    ("snake_Case-WORD's", f"snake_{T}case-{A}word's"),
]


@pytest.mark.parametrize("text, encoded", GOLDEN)
def test_golden_outputs_and_their_inverse(text, encoded):
    assert caseops.encode(text) == encoded == reference_encode(text)
    assert caseops.decode(encoded) == text


EDGE_CASES = [
    "", " ", "\n\n", "A", "a", "Z", "AA", "Aa", "aA", "iPhone", "McDonald", "NASA's", "O'Neil", "x-Ray", "e.g. U.S.A.",
    "".join(OPS), T, A, C, E, E + E, E * 5 + T, T + "a", A + "ab", C + "x", f"a{C}b", "\ue000", "\ue000A\ue000",
    "ÀÉÎÕÜ àéîõü", "ДЖЕ дже", "ΑΒΓ αβγ", "İstanbul IĞDIR", "ß ẞ ﬁ ﬂ ﬀ", "ＡＢＣ ａｂｃ Ｆｕｌｌ", "Ⅸ ™ ㎒ K Å",
    "A\u0301 a\u0301 AB\u0301C", "\u0301A", "E\u0301ric", "12AB34cd56Ef", "a1B2c3D", "日本語ABC中文", "😀A😀ab😀AB",
    "\U0001F600\U0010FFFF\U00010000", "\t\r\n\x00\x01\x7f", "A\x01B", "a\u200bB", "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "abcdefghijklmnopqrstuvwxyz", "aAbBcC", "AaBbCc", "\ufeffBOM", "ＡB", "Aｂ",
]


@pytest.mark.parametrize("text", EDGE_CASES)
def test_bijection_on_edge_cases(text):
    encoded = caseops.encode(text)
    assert encoded == reference_encode(text)
    assert not re.search("[A-Z]", encoded)
    assert caseops.decode(encoded) == text


ALPHABETS = [
    "abcxyz", "ABCXYZ", "  ..'-_\n\t", "0123456789", "".join(OPS) + "\ue000\ue005", "àéÀÉßẞ", "ДжΩω", "ＡＢａｂ",
    "\u0301\u0308\u200b", "😀\U00010000日本", "ﬁﬂİı™",
]


def test_bijection_on_seeded_random_strings():
    rng = random.Random(20240520)
    for _ in range(4000):
        weights = [rng.random() for _ in ALPHABETS]
        text = "".join(rng.choice(rng.choices(ALPHABETS, weights)[0]) for _ in range(rng.randint(0, 40)))
        encoded = caseops.encode(text)
        assert encoded == reference_encode(text), ascii(text)
        assert not re.search("[A-Z]", encoded), ascii(text)
        assert caseops.decode(encoded) == text, ascii(text)


@pytest.mark.parametrize("bad, what", [
    (E, "ESC (U+E004) at character 0 ends the text"),
    (f"abc{E}", "ESC (U+E004) at character 3 ends the text"),
    (f"a{E}b", "ESC (U+E004) at character 1 is followed by 'b', not an operator"),
    (f"{E}\ue000", "ESC (U+E004) at character 0 is followed by '\\ue000', not an operator"),
    (T, "TITLE (U+E001) at character 0 ends the text"),
    (f"{T}Abc", "TITLE (U+E001) at character 0 is followed by 'A', not a lowercase ASCII letter"),
    (f"{A}NASA", "ALLCAPS (U+E002) at character 0 is followed by 'N', not a lowercase ASCII letter"),
    (f"a{C}B", "CAPNEXT (U+E003) at character 1 is followed by 'B', not a lowercase ASCII letter"),
    (f"{C}ab", "CAPNEXT (U+E003) at character 0 is not preceded by an ASCII letter"),
    (f"1{C}a", "CAPNEXT (U+E003) at character 1 is not preceded by an ASCII letter"),
    (f"{T} word", "TITLE (U+E001) at character 0 is followed by ' ', not a lowercase ASCII letter"),
    (f"{T}{T}a", "TITLE (U+E001) at character 0 is followed by '\\ue001', not a lowercase ASCII letter"),
    (f"{A}{C}ab", "ALLCAPS (U+E002) at character 0 is followed by '\\ue003'"),
    (f"{T}1", "TITLE (U+E001) at character 0 is followed by '1'"),
    (f"{T}é", "TITLE (U+E001) at character 0 is followed by 'é'"),
    (f"ok {E}{E}{E}", "ESC (U+E004) at character 5 ends the text"),
])
def test_decode_refuses_malformed_text(bad, what):
    with pytest.raises(caseops.CaseOpsError) as info:
        caseops.decode(bad)
    assert isinstance(info.value, ValueError)
    assert str(info.value) == f"not CaseOps text: {what}" or str(info.value).startswith(f"not CaseOps text: {what}")


def test_decode_accepts_what_normalisation_makes_of_an_encoding():
    # NFKC turns fullwidth letters into ASCII ones, and SentencePiece deletes control characters
    assert caseops.decode(f"{T}helloWorld") == "HelloWorld"  # "Helloｗorld"... a fullwidth W became ASCII
    assert caseops.decode(f"{A}hello{A}orld") == "HELLOORLD"  # "HELLO\x01ORLD" with \x01 deleted
    assert caseops.decode(f"{A}abCd{C}e") == "ABCdE"  # ALLCAPS covers its lowercase run only
    assert caseops.decode("Full") == "Full"
    assert caseops.decode(f"{T}a\u0301", strict=False) == "Aá"[0] + "\u0301"
    # strict=False drops every operator with nothing to act on (the bytes byte_sidecar weighs 0)
    assert caseops.decode(f"{T}é {E}x {C}ab {A}", strict=False) == "é x ab "
    assert caseops.decode(f"{E}{T}{T}a", strict=False) == f"{T}A"


# ---------------------------------------------------------------- tokenizers and the byte sidecar

def sample_texts(n, seed):
    rng = random.Random(seed)
    words = ("The NASA iPhone McDonald's OpenAI HTTPServer x-Ray O'Neil IEEE Straße café Ωμέγα Привет МИР Ｆｕｌｌ ﬁle "
             "naïve E\u0301ric CAFE\u0301 I\u0307 A\x01B a\u200bB 2024 3.14 😀 \ue000 the of and to in is model token "
             "shard byte golf parameter window Linux Python").split()
    ops = [E, T, A, C, E + E, E + T, E + E + A]
    docs = []
    for _ in range(n):
        parts = [rng.choice(words) if rng.random() > 0.05 else rng.choice(ops) for _ in range(rng.randint(3, 60))]
        docs.append(" ".join(parts) + rng.choice(["", ".", f" {E}", f"{T}", "\n\nEnd."]))
    return docs


@pytest.fixture(scope="module")
def tokenizers():
    """(CaseOps tokenizer, plain tokenizer trained on the same CaseOps text)."""
    docs = [caseops.encode(d) for d in sample_texts(400, 1)]
    reserved = spm.SentencePieceProcessor(model_proto=bd.train_tokenizer(iter(docs), 512, reserved=True))
    plain = spm.SentencePieceProcessor(model_proto=bd.train_tokenizer(iter(docs), 512))
    return reserved, plain


def test_reserved_pieces(tokenizers):
    reserved, plain = tokenizers
    assert caseops.reserved_pieces_problem(reserved) is None
    assert [reserved.id_to_piece(i) for i in range(4, 8)] == list(OPS)
    assert reserved.encode(f"x{T}the{A}") == [reserved.piece_to_id(p) for p in ("x", T, "the", A)]
    problem = caseops.reserved_pieces_problem(plain)  # it has the operators, as ordinary (mergeable) pieces
    assert all(plain.piece_to_id(op) != plain.unk_id() for op in OPS)
    assert problem.startswith("it lacks user-defined pieces for the CaseOps operators U+E001 (TITLE), U+E002 "
                              "(ALLCAPS), U+E003 (CAPNEXT), U+E004 (ESC); ")
    # the model file's piece types, read by caseops, agree with SentencePiece's own accessors
    types = caseops._piece_types(reserved.serialized_model_proto())
    for i in range(reserved.vocab_size()):
        piece_type = types[reserved.id_to_piece(i)]
        assert (piece_type == 6) == reserved.is_byte(i) and (piece_type == 3) == reserved.is_control(i)
        assert (piece_type == 2) == reserved.is_unknown(i) and (piece_type == 4) == (4 <= i < 8)


def reference_counts(sp, ids):
    """The sidecar's definition, computed with plain loops: bytes per token, then operator weights by character."""
    per_token = []
    for k, i in enumerate(ids):
        piece = sp.id_to_piece(i)
        if sp.is_byte(i):
            data = bytes([int(piece[3:5], 16)])
        elif sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            data = b""
        else:
            data = (piece[1:] if k == 0 and piece.startswith("\u2581") else piece).replace("\u2581", " ").encode()
        per_token.append(data)
    text = b"".join(per_token).decode()
    weights, escaped = [], False
    for ch in text:
        acting = not escaped and ch in OPS
        escaped = acting and ch == E
        weights += [0 if acting else 1] * len(ch.encode())
    counts, at = [], 0
    for data in per_token:
        counts.append(sum(weights[at:at + len(data)]))
        at += len(data)
    return b"".join(per_token), counts


def test_byte_sidecar_against_the_definition(tokenizers):
    sp = tokenizers[0]
    docs = sample_texts(300, 2) + EDGE_CASES + [f"{E}", f"{T}a b", "  leading spaces", f"{E}{E}{E}{T}x{E}"]
    for doc in docs:
        ids = sp.encode(caseops.encode(doc))
        side = caseops.byte_sidecar(sp, ids)
        assert side.dtype == np.uint16 and len(side) == len(ids)
        data, counts = reference_counts(sp, ids)
        assert data == sp.decode(ids).encode(), ascii(doc)  # the bytes as the tokenizer decodes them
        assert side.tolist() == counts, ascii(doc)
        assert int(side.sum()) == len(caseops.decode(sp.decode(ids), strict=False).encode())


def test_byte_sidecar_sums_to_the_original_length_on_exact_documents(tokenizers):
    sp = tokenizers[0]
    for doc in ["The NASA Launch of iPhone at McDonald's", f"Literal {T} and {E}{A} operators, \ue000 too",
                "Straße, Ωμέγα, Привет МИР, 😀 and 2024", "x" * 300 + "Y" * 300]:
        ids = sp.encode(caseops.encode(doc))
        assert sp.normalize(doc) == doc.replace(" ", "\u2581")  # nothing for the normaliser to change
        assert int(caseops.byte_sidecar(sp, ids).sum()) == len(doc.encode())


def test_a_leading_space_piece_counts_only_inside_a_document(tokenizers):
    sp = tokenizers[0]  # sp.encode never starts a document with '▁' (the normaliser strips it): build ids by hand
    space_the, the, op = sp.piece_to_id("\u2581the"), sp.piece_to_id("the"), sp.piece_to_id(T)
    assert space_the != sp.unk_id() and the != sp.unk_id()
    for ids in ([space_the, space_the], [space_the, op, the], [op, space_the]):
        data, counts = reference_counts(sp, ids)
        assert data == sp.decode(ids).encode()
        assert caseops.byte_sidecar(sp, ids).tolist() == counts
    assert caseops.byte_sidecar(sp, [space_the, space_the]).tolist() == [3, 4]
    assert caseops.stream_sidecar(sp, [1, space_the, space_the, 1, space_the], 1).tolist() == [0, 3, 4, 0, 3]


def test_stream_sidecar_is_per_document_and_chunked(tokenizers):
    sp = tokenizers[0]
    docs = [sp.encode(caseops.encode(d)) for d in sample_texts(60, 3) + [f"ends with {E}", f"{T}starts", "x"]]
    esc, title, x = sp.piece_to_id(E), sp.piece_to_id(T), sp.piece_to_id("x")
    # malformed documents (a dangling ESC): an ESC never escapes across a document boundary
    docs += [[x, esc], [title, x], [esc], [esc, title], [x, esc], [esc, esc], [esc], [esc, esc, esc]]
    per_doc = [caseops.byte_sidecar(sp, ids) for ids in docs]
    for ids, side in zip(docs[-8:], per_doc[-8:]):
        assert side.tolist() == reference_counts(sp, ids)[1]
    stream = np.concatenate([np.concatenate(([1], ids)) for ids in docs]).astype(np.uint16)
    expected = np.concatenate([np.concatenate(([0], s)) for s in per_doc])
    for chunk in (1, 7, 100, 1 << 20):
        assert caseops.stream_sidecar(sp, stream, 1, chunk_tokens=chunk).tolist() == expected.tolist()
    with pytest.raises(ValueError, match="token ids 1..512 are not all ids of the tokenizer's 512 pieces"):
        caseops.stream_sidecar(sp, [1, 5, 512], 1)


def test_sidecar_is_fast_enough(tokenizers):
    import time
    sp = tokenizers[0]
    stream = np.concatenate([np.concatenate(([1], sp.encode(caseops.encode(d)))) for d in sample_texts(2000, 4)])
    stream = np.tile(stream, 10)
    started = time.perf_counter()
    caseops.stream_sidecar(sp, stream, 1)
    rate = len(stream) / (time.perf_counter() - started)
    assert rate > 300_000, f"{rate:,.0f} tokens/s"


# ---------------------------------------------------------------- command line

def run_cli(*args, stdin=b""):
    return subprocess.run([sys.executable, str(REPO / "data" / "caseops.py"), *args], input=stdin,
                          capture_output=True, timeout=60)


def test_cli_round_trip_and_refusals():
    text = "The NASA Launch \ue001 Straße\n".encode()
    encoded = run_cli("encode", stdin=text)
    assert encoded.returncode == 0 and encoded.stdout.decode() == caseops.encode(text.decode())
    decoded = run_cli("decode", stdin=encoded.stdout)
    assert decoded.returncode == 0 and decoded.stdout == text
    bad = run_cli("decode", stdin="\ue001A".encode())
    assert bad.returncode == 2 and bad.stdout == b""
    assert bad.stderr.decode() == ("caseops.py: error: not CaseOps text: TITLE (U+E001) at character 0 is followed by "
                                   "'A', not a lowercase ASCII letter\n")
    for args in ([], ["reverse"], ["encode", "extra"]):
        run = run_cli(*args)
        assert run.returncode == 2 and run.stderr.decode().count("\n") == 1 and b"Traceback" not in run.stderr
    helped = run_cli("--help")
    assert helped.returncode == 0 and b"TITLE U+E001" in helped.stdout and b"decode" in helped.stdout


# ---------------------------------------------------------------- honesty: the same bytes divide the loss

def stream(folder, split):
    files = sorted(folder.glob(f"fineweb_{split}_[0-9]*.bin"))
    return np.concatenate([np.fromfile(f, dtype="<u2", offset=1024) for f in files])


def trainer_bytes(sp, tokens):
    """The trainer's byte table summed over the scored targets tokens[1:], computed here from the tokenizer:
    piece UTF-8 length without a leading '▁' (byte pieces 1, control 0), +1 for a leading '▁' unless the
    previous token is BOS/control."""
    base = np.zeros(sp.vocab_size(), dtype=np.int64)
    space = np.zeros(sp.vocab_size(), dtype=bool)
    for i in range(sp.vocab_size()):
        piece = sp.id_to_piece(i)
        if sp.is_byte(i):
            base[i] = 1
        elif not (sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i)):
            space[i] = piece.startswith("\u2581")
            base[i] = len(piece.removeprefix("\u2581").encode())
    prev, target = tokens[:-1].astype(np.int64), tokens[1:].astype(np.int64)
    after_control = np.array([sp.is_control(int(i)) for i in range(sp.vocab_size())])[prev]
    return int(base[target].sum() + (space[target] & ~after_control).sum())


def build_pair(tmp_path, *sources, vocab, extra=()):
    out = tmp_path / "out"
    names = []
    for flags in ([], ["--caseops"]):
        assert bd.main([*map(str, sources), "--output-root", str(out), "--vocab-size", str(vocab), *extra, *flags]) == 0
        manifest_paths = sorted((out / "datasets").glob("*/manifest.json"))
        names.append(next(p.parent for p in manifest_paths if p.parent.name not in [n.name for n in names]))
    return out, names


@pytest.mark.parametrize("corpus", ["builtin", "capitals"])
def test_with_and_without_caseops_the_loss_is_divided_by_the_same_bytes(tmp_path, corpus):
    if corpus == "builtin":
        out, (plain, cased) = build_pair(tmp_path, vocab=1024)
    else:
        docs = [d.replace("I\u0307", "I") for d in sample_texts(300, 5)]  # İ: NFKC composes I+dot, not i+dot
        src = tmp_path / "docs.jsonl"
        src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
        out, (plain, cased) = build_pair(tmp_path, src, vocab=400, extra=["--val-docs", "60", "--shard-tokens", "700"])
    assert cased.name.endswith("_caseops") and json.loads((cased / "manifest.json").read_text())["text_transform"] \
        == "caseops_v1"
    sp_plain = spm.SentencePieceProcessor(model_file=str(next((out / "tokenizers").glob("*[0-9]_bpe.model"))))
    sp_cased = spm.SentencePieceProcessor(model_file=str(next((out / "tokenizers").glob("*_caseops_bpe.model"))))
    plain_tokens, cased_tokens = stream(plain, "val"), stream(cased, "val")
    sidecar = stream(cased, "val_bytes").astype(np.int64)
    assert len(sidecar) == len(cased_tokens) and not sidecar[cased_tokens == 1].any()
    plain_bytes = trainer_bytes(sp_plain, plain_tokens)
    cased_bytes = int(sidecar[1:].sum())
    docs = [d for d in np.split(plain_tokens, np.flatnonzero(plain_tokens == 1))[1:]]
    assert plain_bytes == sum(len(sp_plain.decode(d[1:].tolist()).encode()) for d in docs)
    assert cased_bytes == plain_bytes > 10_000
    assert len(cased_tokens) != len(plain_tokens)  # different tokens, the same bytes
    assert bd.main(["--verify", str(cased)]) == 0
