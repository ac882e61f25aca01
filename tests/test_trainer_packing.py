"""Trajectory training inputs == the sampler's states.

* Block models: the packed single forward ([prompt ; clean ; one segment per (block, step)])
  gives the same per-token log-probs AND the same TraceRL loss gradients as a naive
  reference written here independently (one ``ModelAdapter.forward`` per trajectory step
  over the sampler's state, the samplers' own forward path), for real sampler trajectories
  and synthetic ones (several tokens per step, EOS inside a block, prompt lengths that are
  not block multiples, shrink 1 and 2); TraceRL's row-per-round layout agrees too.
* The log-prob of every token under the packed forward (at the sampling temperature) is
  the confidence the sampler recorded when it unmasked that token (no top-k/top-p), with
  several tokens per step (dynamic decoding): the training states are exactly the rollout
  states.
* Full-attention rows and AR rows agree with their naive references.
"""

from __future__ import annotations

import pytest
import torch

from dllm_bench import registry
from dllm_bench.blocks import left_pad_prompts, response_position_ids
from dllm_bench.models import load_model
from dllm_bench.models.layout import AttentionLayout, left_pads
from dllm_bench.trainers.networks import PolicyNet
from dllm_bench.trainers.objectives import clipped_policy_terms
from dllm_bench.trainers.scoring import token_logprobs
from dllm_bench.trainers.trajectory import INF_STEP, Rollout, collate, packed_block_inputs, trainable_length

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def block_model():
    torch.manual_seed(0)
    return load_model("tiny-block-dlm", dtype="float32", block_size=4, init_seed=3)


def naive_block_logprobs(adapter, batch) -> torch.Tensor:
    """One adapter forward per (response, step): the sampler's state just before the step."""
    B, mask_id = batch.block_size, batch.mask_id
    out = torch.zeros(batch.size, batch.gen_len)
    for i in range(batch.size):
        n = batch.prompt_lens[i]
        prompt = batch.prompt_ids[i, -n:].tolist()
        pb = left_pad_prompts([prompt], B, adapter.pad_token_id)
        P = pb.padded_len
        L = batch.gen_len
        resp, st, m = batch.response_ids[i], batch.steps[i], batch.mask[i]
        blk = torch.arange(L) // B
        for t in torch.unique(st[m]).tolist():
            k = int(blk[(st == t) & m][0])
            state = torch.where((blk > k) | ((blk == k) & (st >= t)), torch.full_like(resp, mask_id), resp)
            ids = torch.cat([pb.input_ids[0], state])[None]
            pos = torch.cat([pb.position_ids, response_position_ids([n], L)], 1)
            logits = adapter.forward(ids, AttentionLayout(B, kv_start=left_pads(pb.valid)), pos)[0, P:]
            logits[:, mask_id] = float("-inf")
            lp = torch.log_softmax(logits.float(), -1)
            for j in torch.nonzero((st == t) & m).flatten().tolist():
                out[i, j] = lp[j, resp[j]]
    return out


def synthetic_trajs(adapter) -> list[Rollout]:
    eos = adapter.eos_token_id
    g = torch.Generator().manual_seed(5)
    prompts = [[65, 66, 67], [70] * 6, [71, 72, 73, 74, 75, 76, 77, 78, 79], [80]]
    trajs = []
    for k, p in enumerate(prompts):
        L = 12 if k != 1 else 8
        resp = torch.randint(0, 250, (L,), generator=g).tolist()
        steps, t = [], 0
        for _ in range(0, L, 4):  # a block: 1-3 steps, several tokens per step, random order
            order = torch.randperm(4, generator=g).tolist()
            cuts = sorted(torch.randperm(3, generator=g)[: int(torch.randint(0, 3, (1,), generator=g))].add(1).tolist())
            groups = [order[a:b] for a, b in zip([0] + cuts, cuts + [4])]
            blk = [0] * 4
            for grp in groups:
                t += 1
                for q in grp:
                    blk[q] = t
            steps += blk
        if k == 2:
            resp[5] = eos  # EOS inside block 1: tokens after it are state, not targets
        trajs.append(Rollout(p, resp, steps, trainable_length(resp, [eos], post_num=1 if k == 2 else 0)))
    return trajs


def sampler_trajs(adapter, threshold: float, temperature: float = 1.0):
    smp = registry.create("samplers", "block-dynamic", {"temperature": temperature, "max_new_tokens": 8,
                                                        "confidence_threshold": threshold})
    prompts = [adapter.encode(s) for s in ("12+7=", "3*4= hello", "a")]
    gens = smp.generate(adapter, prompts, seed=1, record_trajectory=True)
    trajs = [Rollout(p, g.raw_token_ids, g.trajectory.step_map,
                     trainable_length(g.raw_token_ids, adapter.eos_token_ids)) for p, g in zip(prompts, gens)]
    return trajs, gens


def loss_and_grads(net, batch, layout, adv, old):
    net.zero_grad()
    lp = token_logprobs(net, batch, "block", layout=layout, rows_per_forward=8, temperature=1.0, shift=0,
                        device=CPU, banned=batch.mask_id)
    loss, _ = clipped_policy_terms(lp, old, adv, batch.mask, anchor_logp=old, kl_beta=0.1)
    loss.backward()
    return lp.detach(), loss.detach(), torch.cat([p.grad.flatten() for p in net.parameters()])


@pytest.mark.parametrize("source,shrink", [("synthetic", 1), ("synthetic", 2), ("sampler", 1)])
def test_packed_equals_per_step_reference(block_model, source, shrink):
    ad = block_model
    trajs = synthetic_trajs(ad) if source == "synthetic" else sampler_trajs(ad, 0.02)[0]
    batch = collate(trajs, family="block", block_size=4, shrink=shrink, mask_id=ad.mask_token_id,
                    pad_id=ad.pad_token_id)
    net = PolicyNet(ad.model)
    ref = naive_block_logprobs(ad, batch)
    g = torch.Generator().manual_seed(0)
    adv = torch.randn(batch.size, 1, generator=g).expand(batch.size, batch.gen_len)
    old = (ref + 0.3 * torch.randn(ref.shape, generator=g)) * batch.mask
    lp_p, loss_p, g_p = loss_and_grads(net, batch, "packed", adv, old)
    torch.testing.assert_close(lp_p * batch.mask, ref * batch.mask, atol=2e-5, rtol=0)
    # gradients: the packed forward against one forward per step (training path), and TraceRL's rows
    for layout in ("per_step", "rounds"):
        lp_o, loss_o, g_o = loss_and_grads(net, batch, layout, adv, old)
        torch.testing.assert_close(lp_o * batch.mask, lp_p * batch.mask, atol=2e-5, rtol=0)
        torch.testing.assert_close(loss_o, loss_p, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(g_o, g_p, atol=1e-5, rtol=1e-4)
    assert float(g_p.abs().max()) > 0


def test_packed_row_is_short(block_model):
    """One packed row holds P + L + (number of (block, step) states)·B columns."""
    ad = block_model
    batch = collate(synthetic_trajs(ad), family="block", block_size=4, shrink=1, mask_id=ad.mask_token_id,
                    pad_id=ad.pad_token_id)
    inp = packed_block_inputs(batch)
    n_states = max(len({(j // 4, int(s)) for j, s in enumerate(batch.steps[i].tolist())
                        if batch.mask[i, j]}) for i in range(batch.size))
    assert inp.input_ids.shape == (batch.size, batch.prompt_ids.shape[1] + batch.gen_len + 4 * n_states)
    assert bool((batch.steps[batch.mask] < INF_STEP).all())


def test_logprob_is_the_confidence_the_sampler_recorded(block_model):
    ad = block_model
    trajs, gens = sampler_trajs(ad, 0.3, temperature=0.02)  # sharp: several tokens per step
    for t in trajs:  # score every decoded token, also those after EOS
        t.n_trainable = len(t.response_ids)
    batch = collate(trajs, family="block", block_size=4, shrink=1, mask_id=ad.mask_token_id, pad_id=ad.pad_token_id)
    with torch.no_grad():
        lp = token_logprobs(PolicyNet(ad.model), batch, "block", layout="packed", rows_per_forward=8,
                            temperature=0.02, shift=0, device=CPU, banned=ad.mask_token_id)
    multi = 0
    for i, gen in enumerate(gens):
        for c in gen.trajectory.steps:
            multi += len(c.positions) > 1
            for pos, conf in zip(c.positions, c.confidence):
                assert abs(float(lp[i, pos].exp()) - conf) < 1e-4
    assert multi > 0, "no step unmasked several tokens; lower the threshold"


def test_full_attention_rows_match_reference():
    ad = load_model("tiny-full-dlm", dtype="float32", block_size=4, init_seed=4)
    trajs = synthetic_trajs(ad)
    for shrink in (1, 3):
        batch = collate(trajs, family="full", block_size=4, shrink=shrink, mask_id=ad.mask_token_id,
                        pad_id=ad.pad_token_id)
        with torch.no_grad():
            lp = token_logprobs(PolicyNet(ad.model), batch, "full", layout="packed", rows_per_forward=5,
                                temperature=1.0, shift=0, device=CPU, banned=ad.mask_token_id)
        for i in range(batch.size):
            n = batch.prompt_lens[i]
            pb = left_pad_prompts([batch.prompt_ids[i, -n:].tolist()], 1, ad.pad_token_id)
            st, m, resp = batch.steps[i], batch.mask[i], batch.response_ids[i]
            for t in torch.unique(st[m]).tolist():
                state = torch.where(st >= t, torch.full_like(resp, ad.mask_token_id), resp)
                logits = ad.forward(torch.cat([pb.input_ids[0], state])[None])[0, n:]
                logits[:, ad.mask_token_id] = float("-inf")
                ref = torch.log_softmax(logits.float(), -1)
                for j in torch.nonzero((st == t) & m).flatten().tolist():
                    assert abs(float(lp[i, j]) - float(ref[j, resp[j]].detach())) < 2e-5
        if shrink == 3:  # merged steps: fewer, larger rows
            raw = collate(trajs, family="full", block_size=4, shrink=1, mask_id=0, pad_id=0)
            assert all(len(torch.unique(batch.steps[i][batch.mask[i]])) < len(torch.unique(raw.steps[i][raw.mask[i]]))
                       for i in range(batch.size))


def test_ar_rows_match_causal_lm():
    ad = load_model("tiny-ar", dtype="float32", init_seed=2)
    trajs = synthetic_trajs(ad)
    for t in trajs:
        t.step_map = list(range(1, len(t.response_ids) + 1))
    batch = collate(trajs, family="ar", block_size=1, shrink=1, mask_id=ad.pad_token_id, pad_id=ad.pad_token_id)
    with torch.no_grad():
        lp = token_logprobs(PolicyNet(ad.model), batch, "ar", layout="packed", rows_per_forward=8, temperature=1.0,
                            shift=0, device=CPU)
    for i, t in enumerate(trajs):
        ids = torch.tensor([t.prompt_ids + t.response_ids])
        ref = torch.log_softmax(ad.model(input_ids=ids).logits[0].float(), -1)
        P = len(t.prompt_ids)
        for j in range(t.n_trainable):
            assert abs(float(lp[i, j]) - float(ref[P + j - 1, t.response_ids[j]])) < 2e-5


def test_chunked_head_matches_full_logits(block_model, monkeypatch):
    """Long responses x large vocabularies: the LM head runs in checkpointed column chunks;
    log-probs and gradients equal the one-shot computation, and the generic path (the
    model's own forward, full logits) too."""
    ad = block_model
    batch = collate(synthetic_trajs(ad), family="block", block_size=4, shrink=1, mask_id=ad.mask_token_id,
                    pad_id=ad.pad_token_id)
    net = PolicyNet(ad.model)
    full = loss_and_grads(net, batch, "packed", torch.ones(batch.size, batch.gen_len), torch.zeros(batch.size,
                                                                                                 batch.gen_len))
    monkeypatch.setattr(PolicyNet, "logit_chunk_elems", 3 * ad.vocab_size * batch.size)  # 3 columns per chunk
    chunked = loss_and_grads(net, batch, "packed", torch.ones(batch.size, batch.gen_len),
                             torch.zeros(batch.size, batch.gen_len))
    for a, b in zip(full, chunked):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    # remote-code models without a separable backbone (LLaDA) go through their own forward
    monkeypatch.setattr(net, "fast", False)
    generic = loss_and_grads(net, batch, "packed", torch.ones(batch.size, batch.gen_len),
                             torch.zeros(batch.size, batch.gen_len))
    for a, b in zip(full, generic):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def test_absolute_alignment_training_states_are_the_rollout_states(block_model):
    """Released SDAR / TraDo convention (blocks from position 0, the prompt's tail in the first
    block): rollouts decoded that way and trained with the same alignment score every token
    with exactly the probability the sampler recorded; another alignment is refused."""
    ad = block_model
    smp = registry.create("samplers", "block-dynamic", {"temperature": 0.02, "max_new_tokens": 8,
                                                        "confidence_threshold": 0.3, "block_alignment": "absolute"})
    prompts = [ad.encode(s) for s in ("12+7=", "3*4= hello", "a", "abcd")]
    assert {len(p) % 4 for p in prompts} != {0}
    gens = smp.generate(ad, prompts, seed=1, record_trajectory=True)
    trajs = [Rollout(p, g.raw_token_ids, g.trajectory.step_map, len(g.raw_token_ids),
                     block_alignment=g.trajectory.block_alignment) for p, g in zip(prompts, gens)]
    with pytest.raises(ValueError, match="block alignment"):
        collate(trajs, family="block", block_size=4, shrink=1, mask_id=ad.mask_token_id, pad_id=ad.pad_token_id)
    batch = collate(trajs, family="block", block_size=4, shrink=1, mask_id=ad.mask_token_id,
                    pad_id=ad.pad_token_id, alignment="absolute")
    with torch.no_grad():
        lp = token_logprobs(PolicyNet(ad.model), batch, "block", layout="packed", rows_per_forward=8,
                            temperature=0.02, shift=0, device=CPU, banned=ad.mask_token_id)
    checked = 0
    for i, (p, gen) in enumerate(zip(prompts, gens)):
        tail = len(p) % 4
        assert not bool(batch.mask[i, :tail].any())  # the prompt's tail is context, never a target
        for c in gen.trajectory.steps:
            for pos, conf in zip(c.positions, c.confidence):
                assert abs(float(lp[i, tail + pos].exp()) - conf) < 1e-4
                checked += 1
    assert checked == sum(len(g.raw_token_ids) for g in gens)


def test_sft_absolute_alignment_never_masks_the_prompt_tail(block_model):
    from dllm_bench.trainers.sft import SFT

    ex = [(list(range(65, 71)), [49, 50, 51, 257]), (list(range(70, 73)), [52, 257])]  # prompts of 6 and 3 tokens
    sft = SFT({"model": "tiny-block-dlm", "block_alignment": "absolute", "mask_ratio_min": 1.0})
    got = sft.build_inputs(ex, "block", block_model, 4, torch.Generator().manual_seed(0))
    resp = got["targets"]
    assert resp[0, :2].tolist() == [69, 70] and resp[1, :3].tolist() == [70, 71, 72]  # tails lead the response
    assert got["weight"][0, :2].sum() == 0 and got["weight"][1, :3].sum() == 0
    assert bool((got["weight"][0, 2:6] > 0).all())  # mask ratio 1: every real response token is a target
    # trained slots: two blocks each (EOS-filled to the block end) minus the prompt tails
    assert got["n_resp"] == (8 - 2) + (8 - 3)
