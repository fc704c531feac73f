"""The BERT caption decoder (transformers' BertLMHeadModel) and jit generation against
transformers, with random weights: logits, conversion round trips, greedy and beam outputs
equal to `generate`, nucleus sampling behaviour, and the label-smoothed LM loss."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from clipjax.variables import CheckpointError  # noqa: E402
from clipjax.convert.common import read_state_dict, to_numpy
from clipjax.convert.hf_bert import bert_config_from_hf, bert_lm_from_state_dict, bert_lm_to_state_dict  # noqa: E402
from clipjax.inference.generation import GenerationConfig, expand_for_beams, generate  # noqa: E402
from clipjax.losses.captioning import IGNORE, caption_lm_loss, caption_targets  # noqa: E402
from clipjax.models.captioning import CaptionDecoder

VOCAB, WIDTH, EOS, PAD, BOS = 40, 32, 3, 0, 2


def _hf_decoder(seed=0, eos_bias=0.3):
    torch.manual_seed(seed)
    c = transformers.BertConfig(vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=48, max_position_embeddings=40, is_decoder=True,
                                add_cross_attention=True, pad_token_id=PAD, hidden_dropout_prob=0.0,
                                attention_probs_dropout_prob=0.0)
    m = transformers.BertLMHeadModel(c).eval()
    with torch.no_grad():  # spread the logits so greedy / beam choices are not near-ties
        m.bert.embeddings.word_embeddings.weight.mul_(4.0)
        m.cls.predictions.bias[EOS] += eos_bias  # let sequences end at different lengths
    return m


def _sd(m):
    return {k: to_numpy(v) for k, v in m.state_dict().items()}


def _load(m):
    cfg = bert_config_from_hf(m.config.to_dict(), pool="cls")
    return cfg, bert_lm_from_state_dict(_sd(m), cfg)


def _enc(b=2, s=5, seed=3):
    return np.random.default_rng(seed).standard_normal((b, s, WIDTH)).astype(np.float32)


def test_decoder_logits_parity_and_round_trip(tmp_path):
    hf = _hf_decoder()
    cfg, variables = _load(hf)
    rng = np.random.default_rng(1)
    ids = rng.integers(4, VOCAB, (2, 7))
    mask = np.ones((2, 7), np.int64)
    mask[1, 5:] = 0
    enc = _enc()
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                 encoder_hidden_states=torch.tensor(enc)).logits.numpy()
    out = CaptionDecoder(cfg).apply(variables, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(enc))
    err = np.abs(np.asarray(out["logits"]) - ref)[mask.astype(bool)].max()
    print(f"BertLMHeadModel logits max abs err {err:.2e}")
    assert err < 1e-4

    back = bert_lm_to_state_dict(variables, cfg)
    ref_sd = _sd(hf)
    assert set(back) == set(ref_sd)
    for k, v in ref_sd.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v), k
    # a save_pretrained directory (no tied copies) reads to the same variables
    hf.save_pretrained(tmp_path)
    again = bert_lm_from_state_dict(read_state_dict(str(tmp_path)), cfg)
    assert jax.tree.all(jax.tree.map(np.array_equal, again, variables))
    # an untied decoder weight is refused, not silently dropped
    bad = dict(ref_sd)
    bad["cls.predictions.decoder.weight"] = bad["cls.predictions.decoder.weight"] + 1
    with pytest.raises(CheckpointError, match="untied"):
        bert_lm_from_state_dict(bad, cfg)


def _decode_fn(cfg, variables, enc):
    model = CaptionDecoder(cfg)

    def fn(tokens, cur_len):
        logits = model.apply(variables, tokens, None, enc)["logits"]
        return jnp.take_along_axis(logits, (cur_len - 1).reshape(1, 1, 1).repeat(tokens.shape[0], 0), axis=1)[:, 0]

    return fn


def _prompt(b=2):
    return np.array([[BOS, 7 + i, 9, 11 + 2 * i] for i in range(b)])


GREEDY_CASES = [dict(max_length=14), dict(max_length=16, min_length=10, repetition_penalty=1.3)]
BEAM_CASES = [
    dict(max_length=14, num_beams=3),
    dict(max_length=16, num_beams=3, min_length=8, repetition_penalty=1.5),
    dict(max_length=12, num_beams=4, early_stopping=True, length_penalty=0.6),
]


@pytest.mark.parametrize("kw", GREEDY_CASES + BEAM_CASES)
def test_generate_equals_transformers(kw):
    hf = _hf_decoder()
    cfg, variables = _load(hf)
    enc = _enc()
    prompt = _prompt()
    with torch.no_grad():  # use_cache=False: transformers 5.23's DynamicCache breaks BERT cross-attention
        ref = hf.generate(input_ids=torch.tensor(prompt), encoder_hidden_states=torch.tensor(enc),
                          eos_token_id=EOS, pad_token_id=PAD, do_sample=False, use_cache=False,
                          **kw).numpy()
    gcfg = GenerationConfig(**kw)
    enc_rows = expand_for_beams(jnp.asarray(enc), gcfg.num_beams)
    run = jax.jit(lambda p: generate(_decode_fn(cfg, variables, enc_rows), p, gcfg, EOS, PAD))
    out = run(jnp.asarray(prompt))
    length = int(out["length"])
    got = np.asarray(out["sequences"])[:, :length]
    print(kw, "transformers:", ref.tolist(), "clipjax:", got.tolist())
    assert got.shape == ref.shape and np.array_equal(got, ref)
    assert length > prompt.shape[1] + 2  # the case generated something, not an immediate eos
    fill = EOS if gcfg.num_beams > 1 else PAD  # transformers' beam fill is `pad_token_id or eos`
    assert (np.asarray(out["sequences"])[:, length:] == fill).all()


def test_sampling_respects_top_p_min_length_and_is_reproducible():
    hf = _hf_decoder(eos_bias=3.0)
    cfg, variables = _load(hf)
    enc = jnp.asarray(_enc(b=4, seed=5))
    prompt = jnp.asarray(_prompt(4))
    fn = _decode_fn(cfg, variables, enc)
    greedy = generate(fn, prompt, GenerationConfig(max_length=14), EOS, PAD)
    # a nucleus this small keeps only the most likely token: sampling == greedy
    tiny = generate(fn, prompt, GenerationConfig(max_length=14, do_sample=True, top_p=1e-6), EOS, PAD,
                    rng=jax.random.PRNGKey(0))
    assert np.array_equal(np.asarray(tiny["sequences"]), np.asarray(greedy["sequences"]))
    scfg = GenerationConfig(max_length=20, min_length=12, do_sample=True, top_p=0.9, top_k=50, repetition_penalty=1.1)
    run = jax.jit(lambda p, r: generate(fn, p, scfg, EOS, PAD, rng=r))
    a, b = run(prompt, jax.random.PRNGKey(1)), run(prompt, jax.random.PRNGKey(1))
    c = run(prompt, jax.random.PRNGKey(2))
    assert np.array_equal(np.asarray(a["sequences"]), np.asarray(b["sequences"]))
    assert not np.array_equal(np.asarray(a["sequences"]), np.asarray(c["sequences"]))
    seqs = np.asarray(a["sequences"])
    for row in seqs:
        ends = np.flatnonzero(row == EOS)
        if len(ends):  # no eos before min_length
            assert ends[0] >= scfg.min_length - 1


def test_caption_loss_matches_torch_label_smoothing():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 6, VOCAB)).astype(np.float32)
    ids = rng.integers(4, VOCAB, (3, 6))
    ids[1, 4:] = PAD
    targets = np.asarray(caption_targets(jnp.asarray(ids), PAD, prompt_length=2))
    assert (targets[:, :2] == IGNORE).all() and (targets[1, 4:] == IGNORE).all()
    loss, n = caption_lm_loss(jnp.asarray(logits), jnp.asarray(targets), label_smoothing=0.1)
    ref = torch.nn.CrossEntropyLoss(label_smoothing=0.1, ignore_index=IGNORE)(
        torch.tensor(logits[:, :-1]).reshape(-1, VOCAB), torch.tensor(targets[:, 1:], dtype=torch.long).reshape(-1))
    assert int(n) == int((targets[:, 1:] != IGNORE).sum())
    assert abs(float(loss) - float(ref)) < 1e-5


def test_generation_config_errors():
    with pytest.raises(ValueError, match="top_p"):
        GenerationConfig(top_p=0.0)
    with pytest.raises(ValueError, match="beam sampling"):
        GenerationConfig(num_beams=2, do_sample=True)
    with pytest.raises(ValueError, match="no room"):
        generate(lambda t, c: jnp.zeros((t.shape[0], VOCAB)), jnp.zeros((1, 5), jnp.int32),
                 GenerationConfig(max_length=5), EOS, PAD)
