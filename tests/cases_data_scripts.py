"""Bad-argument and bad-input cases for the two data scripts, for a table-driven test.

CASES is a list of dicts:
  id       short unique name
  script   "data/build_dataset.py" or "data/cached_challenge_fineweb.py" (relative to the repo root)
  args     list of str, run as `python3 <script> *args` from the repo root
  env      (optional) extra environment variables
  setup    (optional) name of a function of this module, called with the case's tmp Path before the run
  code     expected exit status (2: bad arguments, settings or input)
  message  a fragment that must appear in stderr, naming the culprit

Placeholders, replaced with str.replace in args, env values and message:
  {tmp}     the case's own temporary folder (empty but for what setup made)
  {sample}  a dataset folder built by `data/build_dataset.py --output-root R` (R/datasets/sample_sp1024);
            its tokenizer is {sample}/../../tokenizers/sample_1024_bpe.model. Cases only read it.

Every case must: exit with `code`, write exactly one line to stderr containing `message`, print no
traceback, and leave {tmp} as setup made it (and {sample} untouched). The download cases fail before
any network access or disk write, whatever data/ holds. Runner: tests/test_data_build.py::test_bad_input_cases.
"""
from __future__ import annotations

from pathlib import Path

BUILD = "data/build_dataset.py"
DOWNLOAD = "data/cached_challenge_fineweb.py"
SAMPLE_TOKENIZER = "{sample}/../../tokenizers/sample_1024_bpe.model"
OUT = ["--output-root", "{tmp}/out"]
TEXT = ("Parameter golf trains the best language model that fits in sixteen million bytes.\n\n"
        "Shards hold token ids; every document starts with BOS.\n\n"
        "Bits per byte are counted on the validation split, 50,000 documents of FineWeb.\n")


# ---------------------------------------------------------------- setup functions (take the tmp Path)

def folder_source(tmp: Path) -> None:
    (tmp / "corpus.txt").mkdir()


def markdown_source(tmp: Path) -> None:
    (tmp / "notes.md").write_text(TEXT)


def text_source(tmp: Path) -> None:
    (tmp / "docs.txt").write_text(TEXT)


def output_root_is_a_file(tmp: Path) -> None:
    text_source(tmp)
    (tmp / "out").write_text("not a folder")


def datasets_is_a_file(tmp: Path) -> None:
    text_source(tmp)
    (tmp / "out").mkdir()
    (tmp / "out" / "datasets").write_text("not a folder")


def dataset_folder_is_a_file(tmp: Path) -> None:
    text_source(tmp)
    (tmp / "out" / "datasets").mkdir(parents=True)
    (tmp / "out" / "datasets" / "mine").write_text("not a folder")


def garbage_tokenizer(tmp: Path) -> None:
    text_source(tmp)
    (tmp / "garbage.model").write_bytes(b"not a sentencepiece model")


def _train(tmp: Path, name: str, **settings) -> None:
    import io

    import sentencepiece as spm
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXT.splitlines() * 3), model_writer=model,
                                   model_type="bpe", vocab_size=300, hard_vocab_limit=False, num_threads=1,
                                   minloglevel=2, **settings)
    (tmp / name).write_bytes(model.getvalue())


def tokenizer_without_byte_fallback(tmp: Path) -> None:
    text_source(tmp)
    _train(tmp, "nobytes.model", byte_fallback=False, pad_id=0, bos_id=1, eos_id=2, unk_id=3)


def tokenizer_with_other_bos_eos(tmp: Path) -> None:
    text_source(tmp)
    _train(tmp, "ids.model", byte_fallback=True, unk_id=0, bos_id=2, eos_id=3)


def tokenizer_with_ordinary_operator_pieces(tmp: Path) -> None:
    """Trained on CaseOps text, but without the operators as user-defined pieces."""
    import io
    import re

    import sentencepiece as spm
    text_source(tmp)
    caseops = re.sub("[A-Z]", lambda m: "\ue001" + m.group().lower(), TEXT)  # TITLE + letter, as CaseOps writes it
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(caseops.splitlines() * 3), model_writer=model,
                                   model_type="bpe", vocab_size=300, hard_vocab_limit=False, num_threads=1,
                                   minloglevel=2, byte_fallback=True, pad_id=0, bos_id=1, eos_id=2, unk_id=3)
    (tmp / "ordinary.model").write_bytes(model.getvalue())


def empty_jsonl(tmp: Path) -> None:
    (tmp / "empty.jsonl").write_text('{"text": "   "}\n\n')


def malformed_jsonl(tmp: Path) -> None:
    (tmp / "bad.jsonl").write_text('{"text": "fine"}\n{"body": "no text field"}\n')


def latin1_text(tmp: Path) -> None:
    (tmp / "latin1.txt").write_bytes("caf\u00e9 cr\u00e8me".encode("latin-1"))


def a_file(tmp: Path) -> None:
    (tmp / "file.bin").write_bytes(b"\0" * 1100)


# ---------------------------------------------------------------- the cases

def case(id, script, args, code, message, env=None, setup=None):
    entry = {"id": id, "script": script, "args": args, "code": code, "message": message}
    if env is not None:
        entry["env"] = env
    if setup is not None:
        assert setup in globals(), setup
        entry["setup"] = setup
    return entry


CASES = [
    # --- data/cached_challenge_fineweb.py
    case("dl-train-shards-negative", DOWNLOAD, ["--train-shards", "-1"], 2,
         "argument --train-shards: -1 is out of range: give 0 to 1,000,000"),
    case("dl-train-shards-huge", DOWNLOAD, ["--variant", "sp8192", "--train-shards", "5000000"], 2,
         "argument --train-shards: 5000000 is out of range"),
    case("dl-train-shards-not-a-number", DOWNLOAD, ["--train-shards", "ten"], 2,
         "argument --train-shards: 'ten' is not a whole number"),
    case("dl-positional-negative", DOWNLOAD, ["--variant", "sp1024", "-3"], 2, "argument N: -3 is out of range"),
    case("dl-positional-disagrees", DOWNLOAD, ["--variant", "sp8192", "128", "--train-shards", "80"], 2,
         "the train shard count is given twice and disagrees: 128 (positional) and --train-shards 80"),
    case("dl-two-positionals", DOWNLOAD, ["10", "20"], 2, "unrecognized arguments: 20"),
    case("dl-unknown-flag", DOWNLOAD, ["--shards", "3"], 2, "unrecognized arguments: --shards"),
    case("dl-variant-unknown", DOWNLOAD, ["--variant", "sp8192x"], 2, "unknown --variant 'sp8192x'"),
    case("dl-variant-sp0", DOWNLOAD, ["--variant", "sp0"], 2, "unknown --variant 'sp0'"),
    case("dl-variant-byte-typo", DOWNLOAD, ["--variant", "byte256"], 2, "unknown --variant 'byte256'"),
    case("dl-repo-id-no-owner", DOWNLOAD, ["--variant", "sp8192"], 2,
         "MATCHED_FINEWEB_REPO_ID='parameter-golf' is not a Hugging Face repo id",
         env={"MATCHED_FINEWEB_REPO_ID": "parameter-golf"}),
    case("dl-repo-id-url", DOWNLOAD, [], 2, "MATCHED_FINEWEB_REPO_ID='https://huggingface.co/datasets/kevclark/",
         env={"MATCHED_FINEWEB_REPO_ID": "https://huggingface.co/datasets/kevclark/parameter-golf"}),
    case("dl-prefix-escapes", DOWNLOAD, [], 2, "MATCHED_FINEWEB_REMOTE_ROOT_PREFIX='../private' must be a folder",
         env={"MATCHED_FINEWEB_REMOTE_ROOT_PREFIX": "../private"}),
    case("dl-skip-manifest-unknown-variant", DOWNLOAD, ["--variant", "sp2048", "--skip-manifest"], 2,
         "--skip-manifest: "),
    case("dl-variant-caseops-typo", DOWNLOAD, ["--variant", "sp8192_caseop"], 2, "unknown --variant 'sp8192_caseop'"),
    case("dl-variant-caseops-other-vocab", DOWNLOAD, ["--variant", "sp1024_caseops"], 2,
         "unknown --variant 'sp1024_caseops': use sp<VOCAB> (e.g. sp1024, sp8192), sp8192_caseops or byte260"),
    case("dl-variant-caseops-v2", DOWNLOAD, ["--variant", "sp8192_lossless_caps_caseops_v2_reserved"], 2,
         "unknown --variant 'sp8192_lossless_caps_caseops_v2_reserved'"),

    # --- data/build_dataset.py: flags
    case("bd-vocab-zero", BUILD, ["--vocab-size", "0", *OUT], 2, "--vocab-size 0 is out of range: give 260"),
    case("bd-vocab-negative", BUILD, ["--vocab-size", "-5", *OUT], 2, "--vocab-size -5 is out of range"),
    case("bd-vocab-below-byte-pieces", BUILD, ["--vocab-size", "100", *OUT], 2,
         "--vocab-size 100 is out of range: give 260 (4 special ids + 256 byte pieces)"),
    case("bd-vocab-over-uint16", BUILD, ["--vocab-size", "70000", *OUT], 2,
         "--vocab-size 70000 is out of range: give 260 (4 special ids + 256 byte pieces) to 65536"),
    case("bd-vocab-not-a-number", BUILD, ["--vocab-size", "8k", *OUT], 2,
         "argument --vocab-size: invalid int value: '8k'"),
    case("bd-val-fraction-above-1", BUILD, ["--val-fraction", "1.5", *OUT], 2,
         "--val-fraction 1.5 must be between 0 and 1"),
    case("bd-val-fraction-zero", BUILD, ["--val-fraction", "0", *OUT], 2, "--val-fraction 0.0 must be between 0 and 1"),
    case("bd-val-fraction-nan", BUILD, ["--val-fraction", "nan", *OUT], 2,
         "--val-fraction nan must be between 0 and 1"),
    case("bd-val-docs-zero", BUILD, ["--val-docs", "0", *OUT], 2, "--val-docs 0 must be at least 1"),
    case("bd-val-docs-and-fraction", BUILD, ["--val-docs", "3", "--val-fraction", "0.2", *OUT], 2,
         "argument --val-fraction: not allowed with argument --val-docs"),
    case("bd-shard-tokens-zero", BUILD, ["--shard-tokens", "0", *OUT], 2,
         "--shard-tokens 0 is out of range: give 1 to 2147483647"),
    case("bd-shard-tokens-over-int32", BUILD, ["--shard-tokens", "2147483648", *OUT], 2,
         "--shard-tokens 2147483648 is out of range"),
    case("bd-name-escapes", BUILD, ["--name", "../elsewhere", *OUT], 2,
         "--name '../elsewhere' must be a plain folder name"),
    case("bd-name-empty", BUILD, ["--name", "", *OUT], 2, "--name '' must be a plain folder name"),
    case("bd-unknown-flag", BUILD, ["--size", "1024", *OUT], 2, "unrecognized arguments: --size"),
    case("bd-caseops-vocab-below-operators", BUILD, ["--caseops", "--vocab-size", "262", *OUT], 2,
         "--vocab-size 262 is out of range with --caseops: give 264 (4 special ids + 256 byte pieces + 4 CaseOps "
         "operators) to 65536"),
    case("bd-caseops-twice", BUILD, ["--caseops", "--caseops=yes", *OUT], 2,
         "argument --caseops: ignored explicit argument 'yes'"),

    # --- data/build_dataset.py: sources and output
    case("bd-source-missing", BUILD, ["{tmp}/missing.txt", *OUT], 2, "source {tmp}/missing.txt does not exist"),
    case("bd-source-is-a-folder", BUILD, ["{tmp}/corpus.txt", *OUT], 2, "source {tmp}/corpus.txt is a folder",
         setup="folder_source"),
    case("bd-source-wrong-type", BUILD, ["{tmp}/notes.md", *OUT], 2,
         "source {tmp}/notes.md: only .txt and .jsonl files are supported", setup="markdown_source"),
    case("bd-source-empty", BUILD, ["{tmp}/empty.jsonl", *OUT], 2, "the input holds no documents", setup="empty_jsonl"),
    case("bd-source-malformed-jsonl", BUILD, ["{tmp}/bad.jsonl", *OUT], 2,
         '{tmp}/bad.jsonl:2: expected a JSON object with a string "text" field', setup="malformed_jsonl"),
    case("bd-source-not-utf8", BUILD, ["{tmp}/latin1.txt", *OUT], 2, "{tmp}/latin1.txt: not UTF-8 text",
         setup="latin1_text"),
    case("bd-val-docs-leave-no-train", BUILD, ["{tmp}/docs.txt", "--split-paragraphs", "--val-docs", "3", *OUT], 2,
         "3 validation documents leave none for training (the input has 3)", setup="text_source"),
    case("bd-vocab-unreachable", BUILD, ["{tmp}/docs.txt", "--split-paragraphs", "--val-docs", "1",
                                         "--vocab-size", "20000", *OUT], 2,
         "--vocab-size 20000 cannot be reached on this text", setup="text_source"),
    case("bd-output-root-is-a-file", BUILD, ["{tmp}/docs.txt", *OUT], 2,
         "--output-root {tmp}/out: {tmp}/out is a file, not a folder", setup="output_root_is_a_file"),
    case("bd-output-datasets-is-a-file", BUILD, ["{tmp}/docs.txt", *OUT], 2,
         "--output-root {tmp}/out: {tmp}/out/datasets is a file, not a folder", setup="datasets_is_a_file"),
    case("bd-dataset-folder-is-a-file", BUILD, ["{tmp}/docs.txt", "--split-paragraphs", "--name", "mine", *OUT], 2,
         "{tmp}/out/datasets/mine exists and is not a folder", setup="dataset_folder_is_a_file"),

    # --- data/build_dataset.py: --tokenizer
    case("bd-tokenizer-missing", BUILD, ["--tokenizer", "{tmp}/none.model", *OUT], 2,
         "--tokenizer {tmp}/none.model does not exist"),
    case("bd-tokenizer-is-a-folder", BUILD, ["--tokenizer", "{tmp}", *OUT], 2, "--tokenizer {tmp} is a folder"),
    case("bd-tokenizer-garbage", BUILD, ["{tmp}/docs.txt", "--split-paragraphs", "--tokenizer", "{tmp}/garbage.model",
                                         *OUT], 2,
         "--tokenizer {tmp}/garbage.model is not a SentencePiece .model file", setup="garbage_tokenizer"),
    case("bd-tokenizer-no-byte-fallback", BUILD, ["{tmp}/docs.txt", "--split-paragraphs", "--tokenizer",
                                                  "{tmp}/nobytes.model", *OUT], 2,
         "--tokenizer {tmp}/nobytes.model: it cannot represent every byte: 256 of the 256 byte pieces",
         setup="tokenizer_without_byte_fallback"),
    case("bd-tokenizer-bos-eos", BUILD, ["{tmp}/docs.txt", "--split-paragraphs", "--tokenizer", "{tmp}/ids.model",
                                         *OUT], 2,
         "--tokenizer {tmp}/ids.model: its BOS/EOS ids are 2/3 but the challenge's shards and trainer use 1/2",
         setup="tokenizer_with_other_bos_eos"),
    case("bd-caseops-tokenizer-without-operators", BUILD, ["{tmp}/docs.txt", "--split-paragraphs", "--caseops",
                                                           "--tokenizer", SAMPLE_TOKENIZER, *OUT], 2,
         "--tokenizer {sample}/../../tokenizers/sample_1024_bpe.model: it lacks user-defined pieces for the CaseOps "
         "operators U+E001 (TITLE), U+E002 (ALLCAPS), U+E003 (CAPNEXT), U+E004 (ESC)", setup="text_source"),
    case("bd-caseops-tokenizer-ordinary-operators", BUILD, ["{tmp}/docs.txt", "--split-paragraphs", "--caseops",
                                                            "--tokenizer", "{tmp}/ordinary.model", *OUT], 2,
         "--tokenizer {tmp}/ordinary.model: it lacks user-defined pieces for the CaseOps operators U+E001 (TITLE)",
         setup="tokenizer_with_ordinary_operator_pieces"),
    case("bd-tokenizer-vocab-mismatch", BUILD, ["{tmp}/docs.txt", "--split-paragraphs", "--tokenizer",
                                                SAMPLE_TOKENIZER, "--vocab-size", "2048", *OUT], 2,
         "--vocab-size 2048 does not match", setup="text_source"),

    # --- data/build_dataset.py --verify
    case("bd-verify-missing", BUILD, ["--verify", "{tmp}/nothing"], 2, "--verify {tmp}/nothing does not exist"),
    case("bd-verify-a-file", BUILD, ["--verify", "{tmp}/file.bin"], 2,
         "--verify {tmp}/file.bin is a file, not a folder", setup="a_file"),
    case("bd-verify-with-sources", BUILD, ["--verify", "{sample}", "{tmp}/docs.txt"], 2,
         "--verify takes no SOURCE arguments", setup="text_source"),
    case("bd-verify-vocab-zero", BUILD, ["--verify", "{sample}", "--vocab-size", "0"], 2,
         "--vocab-size 0 is out of range: give 1 to 65536"),
    case("bd-verify-with-caseops", BUILD, ["--verify", "{sample}", "--caseops"], 2,
         "--verify takes no --caseops: whether a dataset is CaseOps is read from its manifest.json or tokenizer"),
]

assert len({c["id"] for c in CASES}) == len(CASES), "case ids must be unique"
