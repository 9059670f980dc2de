"""Evaluation: window plan, bits per byte against independent computations, byte tables."""
import math

import numpy as np
import pytest
import sentencepiece as spm
import torch

import train_gpt as tg
from test_train_model import tiny

CPU = tg.Runtime(0, 1, torch.device("cpu"), None, None)


@pytest.mark.parametrize("n, seq_len, stride", [(64, 16, 16), (64, 16, 4), (64, 16, 5), (50, 16, 7), (16, 16, 1),
                                                (1000, 128, 64), (999, 100, 33)])
def test_every_target_is_scored_exactly_once(n, seq_len, stride):
    starts, score_from = tg.eval_windows(n, seq_len, stride)
    counts = np.zeros(n, dtype=int)
    for s, f in zip(starts.tolist(), score_from.tolist()):
        assert 0 <= s and s + seq_len <= n and 0 <= f < seq_len
        counts[s + f:s + seq_len] += 1
    assert (counts == 1).all()
    if stride == seq_len and n % seq_len == 0:
        assert starts.tolist() == list(range(0, n, seq_len)) and not score_from.any()
    else:  # each window after the first scores at most `stride` new targets, with the most context
        assert ((seq_len - score_from[1:]) <= stride).all()


@pytest.fixture(scope="module")
def sample(sample_data):
    data_path, tokenizer_path = sample_data
    sp = spm.SentencePieceProcessor(model_file=tokenizer_path)
    val = np.concatenate([tg.open_shard(f) for f in tg.find_shards(data_path, "val")])
    return sp, val, tg.byte_tables(sp, sp.vocab_size())


def test_byte_table_equals_decoded_utf8_on_the_whole_sample_val_split(sample):
    sp, val, tables = sample
    per_target = tg.target_bytes(val, tables)
    bos = np.flatnonzero(val == tg.BOS_ID).tolist() + [len(val)]
    assert bos[0] == 0 and len(bos) > 200
    for a, b in zip(bos[:-1], bos[1:]):
        # targets a+1 .. b-1 are the document's tokens; target b (the next BOS) counts 0 bytes
        assert per_target[a:b - 1].sum() == len(sp.decode(val[a + 1:b].tolist()).encode("utf-8"))
    assert per_target[np.flatnonzero(val[1:] == tg.BOS_ID)].sum() == 0


def test_byte_table_rules(sample):
    sp, _, (base, space, boundary) = sample
    for control in (0, 1, 2, 3):
        assert base[control] == 0 and boundary[control]
    byte_ids = [i for i in range(sp.vocab_size()) if sp.is_byte(i)]
    assert len(byte_ids) == 256 and (base[byte_ids] == 1).all() and not space[byte_ids].any()
    the = sp.piece_to_id("\u2581the")
    assert (base[the], space[the], boundary[the]) == (3, True, False)
    tokens = np.array([tg.BOS_ID, the, the])  # no space byte right after BOS, one after a normal token
    assert tg.target_bytes(tokens, (base, space, boundary)).tolist() == [3, 4]


def test_bpb_audit_accepts_the_real_table_and_catches_a_wrong_one(sample):
    sp, val, (base, space, boundary) = sample
    cfg = tg.Config(tokenizer_path="tok.model")
    assert tg.audit_tokenizer(val, sp, (base, space, boundary), cfg) == 256
    wrong = base.copy()
    wrong[space] += 1  # the published bug: the space byte counted twice
    with pytest.raises(tg.DataError, match="TOKENIZER_PATH=tok.model does not match the data"):
        tg.audit_tokenizer(val, sp, (wrong, space, boundary), cfg)


def model_and_val(sample, n_tokens=1601):
    sp, val, tables = sample
    torch.manual_seed(0)
    cfg = tiny(vocab_size=sp.vocab_size(), train_seq_len=32, eval_seq_len=32)
    model = tg.GPT(cfg).eval()
    for p in model.parameters():
        p.data.add_(0.02 * torch.randn_like(p))
    # end the scored range exactly at a document end, so its bytes are those of whole decoded documents
    end = int(np.flatnonzero(val[:n_tokens] == tg.BOS_ID)[-1])
    tokens = val[:end + 1]
    data = tg.ValData(torch.from_numpy(tokens.astype(np.int32)),
                      torch.from_numpy(tg.target_bytes(tokens, tables).astype(np.int32)), end, True)
    docs = np.split(tokens[:-1], np.flatnonzero(tokens[:-1] == tg.BOS_ID)[1:])
    total_bytes = sum(len(sp.decode(d[1:].tolist()).encode("utf-8")) for d in docs)
    return cfg, model, data, tokens, total_bytes


@torch.no_grad()
def naive_sliding_nll(model, tokens, seq_len, stride):
    """Score target by target: first window all, then each window's new targets, last window flush."""
    n = len(tokens) - 1
    scored = {}
    start = 0
    while True:
        start = min(start, n - seq_len)
        x = torch.tensor(tokens[start:start + seq_len][None].astype(np.int64))
        y = torch.tensor(tokens[start + 1:start + seq_len + 1][None].astype(np.int64))
        nll = model(x, y)[0]
        for j in range(start, start + seq_len):
            scored.setdefault(j, nll[j - start].item())
        if start + seq_len == n:
            return scored
        start += stride


@pytest.mark.parametrize("stride", [32, 8, 13])
def test_evaluate_matches_an_independent_per_target_computation(sample, stride):
    cfg, model, data, tokens, total_bytes = model_and_val(sample)
    scored = naive_sliding_nll(model, tokens, 32, stride)
    assert sorted(scored) == list(range(data.num_targets))
    cfg.eval_batch_seqs = 5
    loss, bpb = tg.evaluate(model, data, cfg, CPU, stride)
    nll = sum(scored.values())
    assert math.isclose(loss, nll / data.num_targets, rel_tol=1e-6)
    assert math.isclose(bpb, nll / math.log(2) / total_bytes, rel_tol=1e-6)


def test_sliding_at_stride_seq_len_is_plain_evaluation_and_batch_size_does_not_matter(sample):
    cfg, model, data, tokens, _ = model_and_val(sample)
    usable = data.num_targets // 32 * 32
    data = tg.ValData(data.tokens[:usable + 1], data.target_bytes[:usable], usable, True)
    results = []
    for batch in (1, 3, 64):
        cfg.eval_batch_seqs = batch
        results.append(tg.evaluate(model, data, cfg, CPU, 32))
    # plain evaluation written out: non-overlapping windows, mean NLL over every target
    x = torch.tensor(tokens[:usable].astype(np.int64)).view(-1, 32)
    y = torch.tensor(tokens[1:usable + 1].astype(np.int64)).view(-1, 32)
    with torch.no_grad():
        nll = model(x, y).double().sum().item()
    assert math.isclose(results[0][0], nll / usable, rel_tol=1e-6)
    assert math.isclose(results[0][1], nll / math.log(2) / data.target_bytes.sum().item(), rel_tol=1e-6)
    for loss, bpb in results[1:]:
        assert math.isclose(loss, results[0][0], rel_tol=1e-6) and math.isclose(bpb, results[0][1], rel_tol=1e-6)


def test_load_validation_trims_to_whole_windows_and_reports_partial(sample_data, sample):
    data_path, _ = sample_data
    files = tg.find_shards(data_path, "val")
    cfg = tg.Config(vocab_size=1024, val_max_tokens=1000)
    val, _ = tg.load_validation(cfg, files, sample[2], 128, "cpu")
    assert (val.num_targets, len(val.tokens), val.full) == (896, 897, False)
    full, _ = tg.load_validation(tg.Config(vocab_size=1024), files, sample[2], 128, "cpu")
    assert full.full and full.num_targets == (len(sample[1]) - 1) // 128 * 128
    with pytest.raises(tg.DataError, match="fewer than one eval window"):
        tg.load_validation(tg.Config(vocab_size=1024, val_max_tokens=100), files, sample[2], 128, "cpu")


def test_a_scored_target_count_mismatch_is_refused(sample, monkeypatch):
    cfg, model, data, tokens, _ = model_and_val(sample)
    cfg.eval_batch_seqs = 4
    real = tg.eval_windows

    def drop_last_window(n, seq_len, stride):
        starts, score_from = real(n, seq_len, stride)
        return starts[:-1], score_from[:-1]
    monkeypatch.setattr(tg, "eval_windows", drop_last_window)
    with pytest.raises(tg.EvalError, match=r"the evaluation scored \d+ targets but the validation split has "
                                           rf"{data.num_targets}: no score is given"):
        tg.evaluate(model, data, cfg, CPU, 8)


def test_windows_refuse_settings_that_would_skip_targets():
    for n, seq_len, stride in ((100, 32, 33), (100, 32, 0), (20, 32, 8)):
        with pytest.raises(tg.EvalError, match="eval windows need"):
            tg.eval_windows(n, seq_len, stride)


@pytest.mark.parametrize("n, seq_len, stride", [(1000, 128, 48), (1000, 128, 128), (999, 100, 33), (64, 16, 16)])
def test_batches_have_two_shapes_in_all_and_score_every_window_once(n, seq_len, stride):
    """Every batch holds exactly `batch` windows and runs from one of two first positions (a compiled model compiles
    two graphs); each real window appears once with its own first scored position, padding windows score nothing."""
    starts, score_from = tg.eval_windows(n, seq_len, stride)
    batches = tg.eval_batches(starts, score_from, 5, seq_len)
    real = [(s, f) for _, b, fs in batches for s, f in zip(b.tolist(), fs.tolist()) if f < seq_len]
    assert sorted(real) == sorted(zip(starts.tolist(), score_from.tolist()))
    assert all(len(b) == len(fs) == 5 and (fs >= first).all() for first, b, fs in batches)
    later = score_from[score_from > 0]  # the final window of a split that is not whole windows scores fewer
    assert {first for first, _, _ in batches} == {0} | ({seq_len - stride if stride < seq_len else int(later.min())}
                                                        if len(later) else set())
