"""Trainers end to end on tiny models (CPU, single process): SFT loss decreases for every
family, TraceRL raises the mean reward on a small learnable task, TraceRL's update sequence
equals dLLM-RL's published procedure (restated here) and goes off-policy after its first
mini-batch while DiPO stays exactly on-policy, the number of optimizer steps is what the
config says, the value loss decreases on a fixed batch, resume from a checkpoint reproduces
the next steps' losses exactly, final weights load with ``load_model``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from dllm_bench.models import load_model
from dllm_bench.plugins import Doc, Verdict
from dllm_bench.tasks.base import Task
from dllm_bench.trainers.dipo import DiPO
from dllm_bench.trainers.networks import ValueNet
from dllm_bench.trainers.objectives import clipped_value_terms, step_gae
from dllm_bench.trainers.scoring import token_values
from dllm_bench.trainers.sft import SFT
from dllm_bench.trainers.tracerl import RLRun, RLStepState, TraceRL, TrainingRows
from dllm_bench.trainers.trajectory import Rollout, collate

TINY = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 64}


class DigitTask(Task):
    """A small learnable RL task: reward = fraction of digit characters among the first 8
    characters of the completion (a random tiny model starts near 10/263)."""

    name = "digits"
    version = "1"
    description = "fraction of digits"

    def docs(self):
        return [Doc(id=f"d{i}", question=f"q{i}", target=None) for i in range(16)]

    def prompt(self, doc, tokenizer=None):
        return doc.question + ":"

    def score(self, doc, completion):
        r = sum(c.isdigit() for c in completion[:8]) / 8
        return Verdict(correct=r >= 0.5, score=r)

    def key(self, tokenizer=None):
        return {}

    def aggregate(self, verdicts):
        return {}


def metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    rows = [{"prompt": f"{a}+{b}=", "response": str(a + b)} for a in range(8) for b in range(8)]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def rl_config(model: str, **kw) -> dict:
    cfg = {"model": model, "model_args": dict(TINY), "task": "digits", "lr": 3e-3, "kl_beta": 0.0,
           "sampler_args": {"temperature": 1.0, "max_new_tokens": 8}, "prompts_per_step": 4,
           "samples_per_prompt": 6, "group_filter": "none", "micro_batch_size": 24, "truncated_reward": None}
    cfg.update(kw)
    return cfg


@pytest.mark.parametrize("model,mode", [("tiny-block-dlm", "block"), ("tiny-full-dlm", "random_mask"),
                                        ("tiny-ar", "ar")])
def test_sft_loss_decreases_and_final_loads(tmp_path, sft_data, model, mode):
    cfg = {"model": model, "model_args": dict(TINY, block_size=4), "data_file": str(sft_data), "max_steps": 40,
           "batch_size": 16, "micro_batch_size": 8, "lr": 3e-3, "seed": 1}
    if model == "tiny-ar":
        cfg["model_args"].pop("block_size")
    res = SFT(cfg).train(tmp_path / "run")
    losses = [m["loss"] for m in metrics(tmp_path / "run")]
    assert len(losses) == 40
    assert sum(losses[-8:]) / 8 < 0.8 * sum(losses[:8]) / 8
    loaded = load_model(str(res.final_dir))
    assert loaded.family == {"block": "block-diffusion", "random_mask": "full-diffusion", "ar": "ar"}[mode]
    assert loaded.training["trainer"] == "sft" and loaded.training["mode"] == mode and loaded.training["steps"] == 40
    # re-running a finished run does no work and returns the same result
    again = SFT(cfg).train(tmp_path / "run")
    assert again.final_dir == res.final_dir and len(metrics(tmp_path / "run")) == 40


def _resume_from(run: Path, copy: Path, step: int) -> None:
    """Make ``copy`` look like ``run`` interrupted right after checkpoint ``step``."""
    shutil.copytree(run, copy)
    for p in (copy / "checkpoints").glob("step-*"):
        if int(p.name.split("-")[1]) > step:
            shutil.rmtree(p)
    shutil.rmtree(copy / "final")
    (copy / "result.json").unlink()
    lines = [x for x in (copy / "metrics.jsonl").read_text().splitlines() if json.loads(x)["step"] <= step]
    (copy / "metrics.jsonl").write_text("".join(x + "\n" for x in lines))


def test_sft_resume_is_exact(tmp_path, sft_data):
    cfg = {"model": "tiny-block-dlm", "model_args": dict(TINY), "data_file": str(sft_data), "max_steps": 6,
           "save_every": 3, "batch_size": 8, "micro_batch_size": 4, "lr": 3e-3, "lr_schedule": "cosine",
           "warmup_steps": 2}
    SFT(cfg).train(tmp_path / "a")
    _resume_from(tmp_path / "a", tmp_path / "b", 3)
    SFT(cfg).train(tmp_path / "b")
    a, b = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert [m["step"] for m in b] == list(range(1, 7))
    for x, y in zip(a[3:], b[3:]):
        assert (x["loss"], x["grad_norm"], x["lr"]) == (y["loss"], y["grad_norm"], y["lr"])


@pytest.mark.parametrize("procedure", [{"rows_per_update": 16},                       # published, several steps
                                       {"rows_per_update": 20, "shuffle": True, "epochs_per_step": 2,
                                        "partial_update": "step"}])
def test_tracerl_with_value_resume_is_exact(tmp_path, procedure):
    cfg = rl_config("tiny-block-dlm", max_steps=3, save_every=2, micro_batch_size=6, value={"lr": 1e-3},
                    kl_beta=0.01, **procedure)
    TraceRL(cfg, task=DigitTask()).train(tmp_path / "a")
    _resume_from(tmp_path / "a", tmp_path / "b", 2)
    res = TraceRL(cfg, task=DigitTask()).train(tmp_path / "b")
    x, y = metrics(tmp_path / "a")[2], metrics(tmp_path / "b")[2]
    assert x["optimizer_steps"] > 1 and x["value_optimizer_steps"] == x["optimizer_steps"]
    for k in ("reward_mean", "loss", "grad_norm", "value_loss", "value_grad_norm", "clip_frac", "kl",
              "optimizer_steps", "dropped_rows", "last_ratio_max_dev", "lr"):
        assert x[k] == y[k], k
    assert (Path(res.extra_dirs["value"]) / "value_head.pt").is_file()


def test_tracerl_raises_mean_reward(tmp_path):
    res = TraceRL(rl_config("tiny-block-dlm", max_steps=10, seed=0, lr=1e-2), task=DigitTask()).train(tmp_path / "run")
    r = [m["reward_mean"] for m in metrics(tmp_path / "run")]
    assert sum(r[-3:]) / 3 > sum(r[:3]) / 3 + 0.1, r
    assert load_model(str(res.final_dir)).training["trainer"] == "tracerl"


def test_dipo_stays_strictly_on_policy(tmp_path):
    """One optimizer step per rollout batch over all its round rows: the ratio is exactly 1
    and nothing is clipped, every RL step (DiRL DiPO)."""
    cfg = rl_config("tiny-block-dlm", max_steps=2, lr=1e-2, group_filter="nonzero_std", kl_beta=0.1)
    DiPO(cfg, task=DigitTask()).train(tmp_path / "run")
    ms = metrics(tmp_path / "run")
    for m in ms:
        assert m["kept_frac"] > 0 and m["optimizer_steps"] == 1
        assert m["update_rows"] == m["round_rows"] > m["train_rows"] and m["dropped_rows"] == 0
        assert m["ratio_max_dev"] == 0.0 and m["ratio_mean"] == 1.0 and m["clip_frac"] == 0.0
        assert m["grad_norm"] > 0
    assert ms[0]["kl"] == 0.0  # the policy equals the frozen reference before its first update
    assert ms[1]["kl"] > 0.0   # ... and not after it


def test_tracerl_published_procedure_acts_off_policy(tmp_path):
    """With the published defaults the first mini-batch is on-policy and the later ones are
    not: the ratio moves away from 1, the clip fires and the KL to π_old is positive; the
    former single update (minibatch: responses) never leaves ratio 1."""
    kw = dict(max_steps=1, lr=1e-2, kl_beta=0.01, seed=0)
    TraceRL(rl_config("tiny-block-dlm", rows_per_update=16, **kw), task=DigitTask()).train(tmp_path / "new")
    TraceRL(rl_config("tiny-block-dlm", minibatch="responses", loss_norm="response", **kw),
            task=DigitTask()).train(tmp_path / "old")
    new, old = metrics(tmp_path / "new")[0], metrics(tmp_path / "old")[0]
    assert new["optimizer_steps"] == new["round_rows"] // 16 >= 3
    assert new["first_ratio_max_dev"] < 1e-6 and new["last_ratio_max_dev"] > 1e-2
    assert new["clip_frac"] > 0 and new["kl"] > 0
    assert old["optimizer_steps"] == 1 and old["ratio_max_dev"] == 0.0 and old["clip_frac"] == 0.0
    assert old["kl"] == 0.0


def test_value_loss_decreases_on_fixed_batch():
    ad = load_model("tiny-block-dlm", dtype="float32", block_size=4, **TINY)
    g = torch.Generator().manual_seed(0)
    trajs = []
    for i in range(6):
        steps = torch.randperm(8, generator=g).add(1).tolist()
        trajs.append(Rollout([65 + i, 61], torch.randint(0, 250, (8,), generator=g).tolist(), steps, 8,
                             reward=float(i % 2), group=0))
    batch = collate(trajs, family="block", block_size=4, shrink=1, mask_id=ad.mask_token_id, pad_id=ad.pad_token_id)
    reward = torch.tensor([t.reward for t in trajs])
    vnet = ValueNet(ad.model.get_decoder(), ad.model.config.hidden_size)
    opt = torch.optim.AdamW(vnet.parameters(), lr=3e-3)
    kw = dict(layout="packed", rows_per_forward=8, device=torch.device("cpu"))
    with torch.no_grad():
        v0 = token_values(vnet, batch, "block", **kw)
    assert float(v0.abs().max()) == 0.0  # zero-initialised head
    returns = step_gae(v0, reward, batch.steps, batch.mask).returns
    losses = []
    for _ in range(25):
        with torch.no_grad():
            v_old = token_values(vnet, batch, "block", **kw)
        v = token_values(vnet, batch, "block", **kw)
        loss = clipped_value_terms(v, v_old, returns, batch.mask, clip=0.2) / (batch.size * batch.gen_len)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.3 * losses[0], losses


@pytest.mark.parametrize("partial", ["drop", "step"])
def test_optimizer_steps_per_rl_step_follow_the_config(tmp_path, partial):
    """floor (drop) or ceil (step) of round rows / rows_per_update optimizer steps per RL
    step; AdamW moments and step count carry over from one RL step to the next (dLLM-RL
    rebuilds AdamW every RL step in train/rl_trado.py at 10b4fd1)."""
    cfg = rl_config("tiny-block-dlm", max_steps=2, rows_per_update=20, partial_update=partial, micro_batch_size=12,
                    save_every=1)
    TraceRL(cfg, task=DigitTask()).train(tmp_path / "run")
    ms = metrics(tmp_path / "run")
    rnd = (lambda n: n // 20) if partial == "drop" else (lambda n: -(-n // 20))
    for m in ms:
        assert m["round_rows"] % 20 and m["optimizer_steps"] == rnd(m["round_rows"]) >= 2
        assert m["dropped_rows"] == (m["round_rows"] % 20 if partial == "drop" else 0)
        assert m["update_rows"] == m["round_rows"] - m["dropped_rows"]
    states = []
    for step in (1, 2):
        ck = tmp_path / "run" / "checkpoints" / f"step-{step:06d}" / "optimizer.bin"
        states.append(torch.load(ck, map_location="cpu", weights_only=False)["state"])
    steps = [{int(float(v["step"])) for v in s.values()} for s in states]
    n1, n2 = ms[0]["optimizer_steps"], ms[1]["optimizer_steps"]
    assert steps == [{n1}, {n1 + n2}]  # counted on across RL steps
    k = next(iter(states[1]))
    assert float(states[1][k]["exp_avg_sq"].abs().sum()) > 0


def test_restart_without_checkpoint_drops_stale_metrics(tmp_path, sft_data):
    """A run killed before its first checkpoint restarts from step 0; its old log lines go."""
    cfg = {"model": "tiny-ar", "model_args": dict(TINY), "data_file": str(sft_data), "max_steps": 3,
           "batch_size": 4, "micro_batch_size": 4, "lr": 1e-3, "seed": 0}
    run = tmp_path / "run"
    SFT(cfg).train(run)
    first = [m["loss"] for m in metrics(run)]
    # simulate a killed run: no final weights, no checkpoints, a log that went further
    import shutil
    shutil.rmtree(run / "final")
    (run / "result.json").unlink(missing_ok=True)
    shutil.rmtree(run / "checkpoints", ignore_errors=True)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "loss": 9.9}\n{"step": 5, "loss": 9.9}\n')
    SFT(cfg).train(run)
    again = metrics(run)
    assert [m["step"] for m in again] == [1, 2, 3]
    assert [m["loss"] for m in again] == first  # seeded per step: the restart reproduces the run


# ----------------------------------------------------------------------------------------
# TraceRL's published update procedure (dLLM-RL train/rl_trado.py @10b4fd1)
def _procedure_trajs(eos: int) -> list[Rollout]:
    """Six responses of three 4-token blocks, 1-3 steps per block (several tokens per step,
    random order); response 2 ends at an EOS in block 1 whose later tokens were decoded first."""
    g = torch.Generator().manual_seed(7)
    trajs = []
    for k in range(6):
        resp = torch.randint(3, 250, (12,), generator=g).tolist()
        steps, t = [], 0
        for _ in range(3):
            order = torch.randperm(4, generator=g).tolist()
            n_cut = int(torch.randint(0, 3, (1,), generator=g))
            cuts = sorted(torch.randperm(3, generator=g)[:n_cut].add(1).tolist())
            blk = [0] * 4
            for grp in [order[a:b] for a, b in zip([0] + cuts, cuts + [4])]:
                t += 1
                for q in grp:
                    blk[q] = t
            steps += blk
        n_tr = 12
        if k == 2:
            resp[5] = eos
            steps[4:8] = [t + 2, t + 3, t + 1, t + 1]  # the tail after EOS decoded before it
            n_tr = 6
        trajs.append(Rollout([60 + k, 61, 62][: 1 + k % 3], resp, steps, n_tr))
    return trajs


def _reference_rows(trajs: list[Rollout], B: int) -> list[tuple[int, int, dict[int, int]]]:
    """Rows as rl_trado.py builds them (collect_training_data, one_round_vectorized),
    restated: per response, repeatedly take in every block the smallest step not taken yet
    (over all of the response's tokens); the tokens of those steps form one row (its round r
    counts every repetition); a row without a trainable token is discarded.

    Returns ``(response, round, {block: step})`` for the kept rows, in order."""
    out = []
    for i, t in enumerate(trajs):
        left = list(t.step_map)
        r = 0
        while any(s is not None for s in left):
            picks = {}
            for k in range(len(left) // B):
                blk = [s for s in left[k * B:(k + 1) * B] if s is not None]
                if blk:
                    picks[k] = min(blk)
            sel = [j for j in range(len(left)) if left[j] is not None and left[j] == picks.get(j // B)]
            for j in sel:
                left[j] = None
            if any(j < t.n_trainable for j in sel):
                out.append((i, r, {k: m for k, m in picks.items()
                                   if any(j // B == k and j < t.n_trainable for j in sel)}))
            r += 1
    return out


def _row_logprobs(ad, batch, i: int, picks: dict[int, int]) -> dict[int, torch.Tensor]:
    """log π of the row's trainable tokens: for each block k of the row, one forward of the
    sampler's state before step m_k (blocks < k clean, block k masked from m_k on, later
    blocks masked) with the block-causal mask — what the row's masked copy sees under
    dLLM-RL's staircase attention. MASK is excluded from the softmax (the sampler's π)."""
    from dllm_bench.blocks import left_pad_prompts, response_position_ids
    from dllm_bench.models.layout import AttentionLayout, left_pads

    B, L, mask_id = batch.block_size, batch.gen_len, batch.mask_id
    n = batch.prompt_lens[i]
    pb = left_pad_prompts([batch.prompt_ids[i, -n:].tolist()], B, ad.pad_token_id)
    resp, st, tr = batch.response_ids[i], batch.steps[i], batch.mask[i]
    blk = torch.arange(L) // B
    out = {}
    for k, m in picks.items():
        state = torch.where((blk > k) | ((blk == k) & (st >= m)), torch.full_like(resp, mask_id), resp)
        ids = torch.cat([pb.input_ids[0], state])[None]
        pos = torch.cat([pb.position_ids, response_position_ids([n], L)], 1)
        logits = ad.forward(ids, AttentionLayout(B, kv_start=left_pads(pb.valid)), pos)[0, pb.padded_len:]
        logits = logits.index_fill(-1, torch.tensor([mask_id]), float("-inf"))
        lp = torch.log_softmax(logits, -1)
        for j in torch.nonzero((blk == k) & (st == m) & tr).flatten().tolist():
            out[j] = lp[j, resp[j]]
    return out


def _reference_update(ad, trajs, batch, adv, L1, gas, cfg):
    """dLLM-RL's update, restated from train/rl_trado.py @10b4fd1: π_old of every row once,
    before any update (lines 629-682); rows one at a time in dataset order (DataLoader
    without sampler, batch_size_lm 1; lines 600-606, 783-806); a row's loss is its summed
    clipped surrogate + β k3(π_θ, π_old) over L1 (lines 731-760), divided by the
    gradient_accumulation_steps (line 807); the optimizer steps after rows gas, 2·gas, ...
    (the DeepSpeed engine's accumulation boundary) and rows after the last multiple never
    reach a step. Returns ``[(rows, loss), ...]`` per optimizer step."""
    rows = _reference_rows(trajs, batch.block_size)
    params = [p for p in ad.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    with torch.no_grad():
        old = {(i, r): _row_logprobs(ad, batch, i, picks) for i, r, picks in rows}
    steps, acc, acc_rows = [], 0.0, []
    for n, (i, r, picks) in enumerate(rows, start=1):
        new = _row_logprobs(ad, batch, i, picks)
        terms = []
        for j, lp in new.items():
            d = torch.clamp(lp - old[(i, r)][j], -10, 10)
            ratio = torch.exp(d)
            a = adv[i]
            pg = -torch.minimum(ratio * a, torch.clamp(ratio, 1 - cfg["clip_low"], 1 + cfg["clip_high"]) * a)
            terms.append(pg + cfg["kl_beta"] * (torch.exp(-d) - 1 + d))
        loss = torch.stack(terms).sum() / L1 / gas
        loss.backward()
        acc += float(loss.detach())
        acc_rows.append((i, r))
        if n % gas == 0:
            torch.nn.utils.clip_grad_norm_(params, cfg["max_grad_norm"])
            opt.step()
            opt.zero_grad(set_to_none=True)
            steps.append((acc_rows, acc))
            acc, acc_rows = 0.0, []
    return steps


def test_update_sequence_matches_rl_trado_procedure(tmp_path):
    """Same mini-batches (rows, order), same number of optimizer steps, same loss per step
    and the same final weights as the procedure restated from rl_trado.py, on a packed
    batch with an EOS block whose tail was decoded first (rounds counted over all tokens)."""
    import copy

    from dllm_bench.trainers.engine import Engine
    from dllm_bench.trainers.networks import PolicyNet
    from dllm_bench.trainers.scoring import token_logprobs

    torch.manual_seed(0)
    ad = load_model("tiny-block-dlm", dtype="float32", block_size=4, init_seed=3, **TINY)
    ad.model.double()
    ref = copy.deepcopy(ad)
    trajs = _procedure_trajs(ad.eos_token_id)
    batch = collate(trajs, family="block", block_size=4, shrink=1, mask_id=ad.mask_token_id,
                    pad_id=ad.pad_token_id)
    gas, L1 = 4, 12
    cfg = rl_config("tiny-block-dlm", lr=5e-2, kl_beta=0.05, rows_per_update=gas, max_grad_norm=1.0)
    adv_seq = torch.tensor([1.0, -0.5, 0.8, -1.2, 0.3, -0.4], dtype=torch.float64)
    want = _reference_update(ref, trajs, batch, adv_seq, L1, gas, {**cfg, "clip_low": 0.2, "clip_high": 0.2})

    tr = TraceRL(cfg)
    assert (tr.config.minibatch, tr.config.partial_update, tr.config.shuffle, tr.config.loss_norm) == \
        ("round_rows", "drop", False, "round_row")                    # the published defaults
    eng = Engine(tr.config, tmp_path / "run", "tracerl")
    net = PolicyNet(ad.model, ad.attn_backend)
    model, opt, sched = eng.prepare(net, eng.make_optimizer(net), 1)
    lp_kw = dict(family="block", layout="packed", rows_per_forward=8, temperature=1.0, shift=0,
                 device=torch.device("cpu"), banned=ad.mask_token_id)
    with torch.no_grad():
        old = token_logprobs(model, batch, **lp_kw)
    rid = tr.round_ids(batch, "block")
    adv = adv_seq[:, None].expand(batch.size, batch.gen_len).clone()
    run = RLRun(engine=eng, adapter=ad, family="block", shift=0, policy=model, task=DigitTask(), opt=opt, sched=sched)
    assert tr.logprob_kwargs(run) == lp_kw
    rows = TrainingRows(batch=batch, src=list(range(batch.size)), row_adv=adv_seq, rid=rid, block_size=4, gen_len=L1,
                        adv=adv, old_logp=old)
    m = tr.policy_update(run, RLStepState(step=0, g=torch.Generator(), t_start=0.0), rows)
    got = tr.last_update_trace

    n_rows = len(_reference_rows(trajs, 4))
    assert len(want) == n_rows // gas >= 3 and m["optimizer_steps"] == len(want)
    assert m["dropped_rows"] == n_rows % gas > 0
    assert [g["rows"] for g in got] == [w[0] for w in want]
    assert rid[2, 4:8].tolist() == [1, 2, -1, -1]  # the EOS block's tail took round 0
    for g, (_, loss) in zip(got, want):  # (the trainer's log-probs are float32)
        assert g["loss"] == pytest.approx(loss, rel=1e-5, abs=1e-9)
    assert got[0]["ratio_max_dev"] < 1e-6 and got[-1]["ratio_max_dev"] > 1e-3   # off-policy after step 1
    assert max(g["clip_frac"] for g in got) > 0
    # same weights up to float32 noise (an extra/missing step or another row split moves
    # them by ~lr = 5e-2)
    for p, q in zip(ad.model.parameters(), ref.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-4)
