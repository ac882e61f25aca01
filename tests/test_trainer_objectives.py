"""RL objective pieces (pure tensor code): group advantages, filtering, step-level GAE,
the clipped surrogate with k3 KL, the clipped value loss, the loss normalisers (per-token
weights), TraceRL's round rows and update plan, shrink and trainable length."""

from __future__ import annotations

import math

import pytest
import torch

from dllm_bench.trainers.batching import update_plan
from dllm_bench.trainers.objectives import (
    clipped_policy_terms,
    clipped_value_terms,
    group_zscore,
    keep_groups,
    loss_normaliser,
    step_gae,
    token_weights,
)
from dllm_bench.trainers.trajectory import (
    INF_STEP,
    Rollout,
    collate,
    round_ids,
    round_rows,
    shrink_steps,
    trainable_length,
)


def naive_gae(values, reward, steps, mask, gamma, lam):
    """Literal step-level GAE as in dLLM-RL train/train_trado_value.py at 10b4fd1, one response at a time."""
    b, L = values.shape
    R_out, A_out = torch.zeros(b, L), torch.zeros(b, L)
    for i in range(b):
        js = [j for j in range(L) if mask[i, j]]
        ts = sorted({int(steps[i, j]) for j in js})
        S = len(ts)
        if S == 0:
            continue
        toks = {t: [j for j in js if int(steps[i, j]) == t] for t in ts}
        r_tok = {j: (float(reward[i]) if int(steps[i, j]) == ts[-1] else 0.0) for j in js}
        V = [sum(float(values[i, j]) for j in toks[t]) / len(toks[t]) for t in ts] + [0.0]
        r = [sum(r_tok[j] for j in toks[t]) / len(toks[t]) for t in ts] + [0.0]
        Rs, As = [0.0] * (S + 1), [0.0] * (S + 1)
        for k in range(S - 1, -1, -1):
            Rs[k] = r[k] + gamma * Rs[k + 1]
            As[k] = (r[k] - V[k] + gamma * V[k + 1]) + gamma * lam * As[k + 1]
        for k, t in enumerate(ts):
            for j in toks[t]:
                R_out[i, j] = r_tok[j] + gamma * Rs[k + 1]
                A_out[i, j] = (r_tok[j] - float(values[i, j])) + gamma * V[k + 1] + gamma * lam * As[k + 1]
    return R_out, A_out


def _random_traj(seed: int, b: int = 3, L: int = 12):
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(b, L, generator=g)
    reward = torch.randn(b, generator=g)
    steps = torch.randint(1, 6, (b, L), generator=g)
    mask = torch.rand(b, L, generator=g) < 0.8
    mask[2] = False  # a response with nothing to train
    mask[2, :3] = True
    return values, reward, steps, mask


def test_gae_gamma_lambda_one_is_reward_minus_value():
    values, reward, steps, mask = _random_traj(0)
    out = step_gae(values, reward, steps, mask, gamma=1.0, lam=1.0)
    m = mask.float()
    torch.testing.assert_close(out.returns, reward[:, None].expand_as(values) * m)
    torch.testing.assert_close(out.advantages, (reward[:, None] - values) * m, atol=1e-5, rtol=0)


@pytest.mark.parametrize("gamma,lam", [(0.9, 0.95), (1.0, 0.0), (0.5, 1.0)])
def test_gae_matches_the_step_level_recursion(gamma, lam):
    values, reward, steps, mask = _random_traj(1)
    out = step_gae(values, reward, steps, mask, gamma=gamma, lam=lam)
    R, A = naive_gae(values, reward, steps, mask, gamma, lam)
    torch.testing.assert_close(out.returns, R, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.advantages, A, atol=1e-5, rtol=0)


def test_group_zscore_and_filters():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.5])
    g = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 3])
    a = group_zscore(r, g)
    torch.testing.assert_close(a[:4], torch.tensor([1.0, -1.0, -1.0, 1.0]))
    assert a[4:].abs().max() == 0  # zero-variance groups (and a singleton) get no advantage
    assert keep_groups(r.tolist(), g.tolist(), "nonzero_std") == [True] * 4 + [False] * 5
    assert keep_groups(r.tolist(), g.tolist(), "acc_range", (0.2, 0.8)) == [True] * 4 + [False] * 4 + [True]
    assert keep_groups(r.tolist(), g.tolist(), "none") == [True] * 9


def test_on_policy_surrogate_has_ratio_one_and_policy_gradient():
    g = torch.Generator().manual_seed(0)
    logp = (torch.randn(2, 5, generator=g) - 2).requires_grad_(True)
    adv = torch.randn(2, 5, generator=g)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    loss, st = clipped_policy_terms(logp, logp.detach(), adv, mask, clip_low=0.2, clip_high=0.28)
    assert st.ratio_max_dev == 0.0 and st.clip_frac == 0.0 and st.ratio_mean == 1.0
    assert math.isclose(float(loss.detach()), float(-(adv * mask).sum()), rel_tol=1e-6)
    loss.backward()
    torch.testing.assert_close(logp.grad, -adv * mask)  # ∇ of −ρA at ρ = 1 is −A ∇logπ


def test_surrogate_clips_and_k3_kl():
    logp = torch.tensor([[0.0, 0.0, 0.0, -50.0]], requires_grad=True)
    old = torch.tensor([[-1.0, 1.0, 0.0, 0.0]])
    adv = torch.tensor([[1.0, -1.0, 1.0, 1.0]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    loss, st = clipped_policy_terms(logp, old, adv, mask, clip_low=0.2, clip_high=0.2, log_ratio_clamp=10.0,
                                    anchor_logp=old, kl_beta=0.5)
    # token 0: ratio e > 1.2 with A > 0 -> clipped; token 1: ratio 1/e < 0.8 with A < 0 -> clipped;
    # token 3: log-ratio -50 clamped to -10
    assert st.clip_frac == pytest.approx(2 / 4)
    d = torch.clamp(logp.detach() - old, -10, 10)
    kl = (torch.exp(-d) - 1 + d).sum()
    pg = -(1.2 * 1.0) - (-0.8 * 1.0) - 1.0 - math.exp(-10)
    assert float(loss.detach()) == pytest.approx(pg + 0.5 * float(kl), rel=1e-5)


def test_value_loss_clipping_and_normaliser():
    v = torch.tensor([[1.0, 0.0]], requires_grad=True)
    v_old = torch.tensor([[0.0, 0.0]])
    ret = torch.tensor([[1.0, 2.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss = clipped_value_terms(v, v_old, ret, mask, clip=0.2)
    # token 0: max((1-1)^2, (0.2-1)^2) = 0.64 ; token 1: max(4, 4) = 4
    assert float(loss) == pytest.approx(0.5 * (0.64 + 4.0))
    w = token_weights(mask, None, "response", 16)
    assert float(clipped_value_terms(v, v_old, ret, mask, clip=0.2, weights=w)) == pytest.approx(0.5 * 4.64 / 16)


def test_token_weights_per_normaliser():
    """Two responses, L1 = 10; response 0 has rows {0: 2 tokens, 1: 1 token}, response 1 row
    {2: 3 tokens}; a token outside the mask never counts."""
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]], dtype=torch.bool)
    rounds = torch.tensor([[0, 0, 1, 1], [2, 2, 2, -1]])
    w = lambda mode, **kw: token_weights(mask, rounds, mode, 10, **kw)  # noqa: E731
    m = mask.double()
    torch.testing.assert_close(w("round_row"), m / (3 * 10.0))      # 3 rows x L1
    torch.testing.assert_close(w("response"), m / (2 * 10.0))       # 2 responses x L1
    torch.testing.assert_close(w("tokens"), m / 6.0)                # 6 tokens
    rm = w("row_mean")                                              # token mean per row, mean over 3 rows
    assert rm[0].tolist() == pytest.approx([1 / 6, 1 / 6, 1 / 3, 0])
    assert rm[1].tolist() == pytest.approx([1 / 9, 1 / 9, 1 / 9, 0])
    # DiRL: every response counts for block_size/shrink rows (4 here): 2 x 4 = 8 rows
    rm4 = w("row_mean", rows_per_response=4)
    assert rm4[0].tolist() == pytest.approx([1 / 16, 1 / 16, 1 / 8, 0])
    assert float(rm4.sum()) == pytest.approx(3 / 8)                 # 3 real rows out of 8
    with pytest.raises(ValueError):
        token_weights(mask, rounds, "bogus", 10)
    # the uniform ones as the constant a summed loss is divided by
    assert [loss_normaliser(mask, rounds, k, 10) for k in ("round_row", "response", "tokens")] == [30.0, 20.0, 6.0]
    assert loss_normaliser(mask, None, "round_row", 10) == 20.0     # no round ids: one row per response
    with pytest.raises(ValueError):
        loss_normaliser(mask, rounds, "row_mean", 10)


def test_weighted_surrogate_is_the_weighted_token_sum():
    g = torch.Generator().manual_seed(1)
    logp = torch.randn(2, 5, generator=g).requires_grad_()
    old, anchor, adv = torch.randn(2, 5, generator=g), torch.randn(2, 5, generator=g), torch.randn(2, 5, generator=g)
    mask = torch.rand(2, 5, generator=g) < 0.7
    w = torch.rand(2, 5, generator=g).double()
    loss, _ = clipped_policy_terms(logp, old, adv, mask, anchor_logp=anchor, kl_beta=0.3, weights=w)
    ratio = torch.exp(logp.detach() - old)
    pg = -torch.minimum(ratio * adv, ratio.clamp(0.8, 1.2) * adv)
    k = logp.detach() - anchor
    want = ((pg + 0.3 * (torch.exp(-k) - 1 + k)) * mask * w.float()).sum()
    assert float(loss) == pytest.approx(float(want), rel=1e-6)


def _batch(step_maps, n_trainable, B=4, family="block"):
    trajs = [Rollout([1, 2], list(range(10, 10 + len(s))), s, n) for s, n in zip(step_maps, n_trainable)]
    return collate(trajs, family=family, block_size=B, shrink=1, mask_id=0, pad_id=0)


def test_round_rows_count_the_steps_of_every_response_token():
    """Round r of a response = the r-th distinct step of each block, counted over all of the
    block's tokens (rl_trado.py one_round_vectorized), trainable or not."""
    # response 0: blocks [2 1 3 4 | 6 6 5 7], all trainable -> rounds [1 0 2 3 | 1 1 0 2]
    # response 1: EOS at position 3 (4 trainable tokens); the untrainable tail of block 1 keeps
    #             its steps, so block 0 [3 4 1 2] -> rounds [2 3 0 1]
    # response 2: block 0 [5 5 5 5] trainable; block 1 [1 2 3 4] untrainable: round 0 holds only
    #             block 0, rounds 1-3 would hold no trainable token -> no rows
    b = _batch([[2, 1, 3, 4, 6, 6, 5, 7], [3, 4, 1, 2, 5, 6, 7, 8], [5, 5, 5, 5, 1, 2, 3, 4]], [8, 4, 4])
    rid = round_ids(b, "block")
    assert rid.tolist() == [[1, 0, 2, 3, 1, 1, 0, 2], [2, 3, 0, 1, -1, -1, -1, -1], [0, 0, 0, 0, -1, -1, -1, -1]]
    assert round_rows(rid) == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2), (1, 3), (2, 0)]
    # an untrainable token decoded first shifts the trainable ones to round 1
    b2 = _batch([[2, 3, 1, 4]], [2])
    assert round_ids(b2, "block").tolist() == [[1, 2, -1, -1]]
    # full attention: one group over the whole response; AR: one row per response
    assert round_ids(_batch([[2, 1, 3, 4, 6, 6, 5, 7]], [8], B=1, family="full"), "full").tolist() == \
        [[1, 0, 2, 3, 5, 5, 4, 6]]
    assert round_ids(_batch([[1, 2, 3, 4]], [3], B=1, family="ar"), "ar").tolist() == [[0, 0, 0, -1]]


def test_update_plan_cuts_round_rows_in_rollout_order():
    b = _batch([[2, 1, 3, 4, 6, 6, 5, 7], [3, 4, 1, 2, 5, 6, 7, 8], [5, 5, 5, 5, 1, 2, 3, 4]], [8, 4, 4])
    rid = round_ids(b, "block")
    rows = round_rows(rid)                                           # 9 rows
    kw = dict(minibatch="round_rows", updates_per_step=1, epochs=1, shuffle=False, g=torch.Generator())
    passes, dropped = update_plan(rid, b.mask, rows_per_update=4, partial_update="drop", **kw)
    assert [mb.rows for mb in passes[0]] == [rows[0:4], rows[4:8]] and dropped == 1
    passes, dropped = update_plan(rid, b.mask, rows_per_update=3, partial_update="drop", **kw)
    assert [mb.rows for mb in passes[0]] == [rows[0:3], rows[3:6], rows[6:9]] and dropped == 0
    mb = passes[0][1]                                                # rows (0,3), (1,0), (1,1)
    assert mb.responses == [0, 1]
    assert mb.mask.tolist() == [[False, False, False, True] + [False] * 4, [False, False, True, True] + [False] * 4]
    passes, dropped = update_plan(rid, b.mask, rows_per_update=4, partial_update="step", **kw)
    assert [len(mb.rows) for mb in passes[0]] == [4, 4, 1] and dropped == 0
    # every trainable token is trained exactly once per pass
    cover = torch.zeros_like(b.mask, dtype=torch.long)
    for mb in passes[0]:
        cover[mb.responses] += mb.mask.long()
    assert torch.equal(cover, b.mask.long())
    # epochs and shuffling: a permutation of the rows per pass, drawn from the step's generator
    passes, _ = update_plan(rid, b.mask, rows_per_update=3, partial_update="drop", minibatch="round_rows",
                            updates_per_step=1, epochs=2, shuffle=True, g=torch.Generator().manual_seed(0))
    assert len(passes) == 2 and all(sorted(r for mb in p for r in mb.rows) == rows for p in passes)
    assert [r for mb in passes[0] for r in mb.rows] != rows
    # the former procedure: whole responses, updates_per_step mini-batches
    passes, _ = update_plan(rid, b.mask, minibatch="responses", rows_per_update=32, partial_update="drop",
                            updates_per_step=2, epochs=1, shuffle=False, g=torch.Generator())
    assert [mb.responses for mb in passes[0]] == [[0, 1], [2]]
    assert torch.equal(passes[0][0].mask, b.mask[:2])


def test_shrink_merges_consecutive_steps_per_block():
    s = torch.tensor([[3, 1, 2, 4, 7, 5, 5, 6, INF_STEP, INF_STEP, INF_STEP, INF_STEP]])
    out = shrink_steps(s, 4, 2)
    # block 0 distinct {1,2,3,4} -> {2,2,4,4}; block 1 distinct {5,6,7} -> {6,6,7}
    assert out[0, :8].tolist() == [4, 2, 2, 4, 7, 6, 6, 6]
    assert out[0, 8:].tolist() == [INF_STEP] * 4
    torch.testing.assert_close(shrink_steps(s, 4, 1), s)


def test_trainable_length():
    assert trainable_length([5, 6, 9, 9, 9], eos_ids=[9]) == 3
    assert trainable_length([5, 6, 9, 9, 9], eos_ids=[9], post_num=1) == 4
    assert trainable_length([5, 6, 7], eos_ids=[9]) == 3


def test_every_trainer_config_field_has_description_and_unit():
    from dllm_bench import registry

    for name in ("sft", "tracerl", "value", "block-adapt", "dipo", "random-mask-rl"):
        cls = registry.load("trainers", name)
        assert cls.Config.model_config.get("extra") == "forbid"
        for field, info in cls.Config.model_fields.items():
            assert info.description and "Unit:" in info.description, f"{name}.{field}"


def test_update_procedure_defaults_and_validation():
    from pydantic import ValidationError

    from dllm_bench.trainers.dipo import DiPO
    from dllm_bench.trainers.tracerl import TraceRL

    t = TraceRL.Config(model="m", task="t")
    # dLLM-RL configs/rl_trado.yaml @10b4fd1: gradient_accumulation_steps 32 x batch_size_lm 1,
    # num_train_epochs 1, eps 0.2, beta 0.01 (KL to pi_old); DataLoader in order
    assert (t.minibatch, t.rows_per_update, t.partial_update, t.shuffle, t.epochs_per_step, t.loss_norm,
            t.old_logprobs, t.clip_low, t.clip_high, t.kl_beta, t.kl_anchor) == \
        ("round_rows", 32, "drop", False, 1, "round_row", "recompute", 0.2, 0.2, 0.01, "old")
    d = DiPO.Config(model="m", task="t")
    assert (d.minibatch, d.updates_per_step, d.epochs_per_step, d.old_logprobs, d.loss_norm) == \
        ("responses", 1, 1, "detach", "row_mean")
    with pytest.raises(ValidationError, match="updates_per_step"):
        TraceRL.Config(model="m", task="t", updates_per_step=2)       # ignored with round_rows: refused
    with pytest.raises(ValidationError, match="detach"):
        TraceRL.Config(model="m", task="t", old_logprobs="detach")    # several steps cannot be on-policy
    with pytest.raises(ValidationError):
        DiPO.Config(model="m", task="t", minibatch="round_rows")
    assert TraceRL.Config(model="m", task="t", loss_norm="gen_len").loss_norm == "response"  # old name
    old = TraceRL.Config(model="m", task="t", minibatch="responses", updates_per_step=1, loss_norm="response")
    assert TraceRL.Config.model_validate(old.model_dump(mode="json")) == old  # round-trips (recipes, resume)
