"""Few-step generation by training (issue 16), checked on the exact oracle."""

from __future__ import annotations

import pytest
import torch

import diffusekit as dk
from diffusekit.data import ArrayLoader
from diffusekit.distill import (
    ConsistencyLoss, ProgressiveLoss, ReflowLoss, SolverStep, consistency_times, curriculum, generate_couplings,
    load_couplings, stage_counts, straightness, teacher_times, trajectory_straightness,
)
from diffusekit.oracle import GaussianMixture
from diffusekit.train import Trainer, TrainConfig

from .conftest import all_schedules, smooth_mixture


@pytest.mark.parametrize("name", ["edm", "vp", "flow", "discrete_linear"])
def test_the_kth_progressive_target_equals_two_exact_teacher_steps(name: str) -> None:
    """Stage k (n = 8, 4, 2, 1 student steps): one student DDIM step with the target (x~, eps~) lands exactly
    where two DDIM steps of the exact teacher land, on every interval of the student's grid."""
    schedule = all_schedules()[name]
    oracle = smooth_mixture(schedule, dim=3)
    ddim = dk.make_solver("ddim")
    for n in stage_counts(16, 1):
        loss = ProgressiveLoss(oracle, n)
        student, teacher = (dk.make_grid("uniform_angle", schedule, m) for m in (n, 2 * n))
        i = torch.arange(n)
        z = schedule.add_noise(oracle.sample(n, seed=n), student.t[:-1], torch.randn(n, 3, dtype=torch.float64))
        x, eps, t = loss.target(z, i)
        torch.testing.assert_close(t, student.t[:-1])
        one = student.alpha[1:, None] * x + student.sigma[1:, None] * eps
        two = torch.cat([dk.sample(oracle, ddim, z[j : j + 1], grid=teacher.slice(2 * j, 2 * j + 2), progress=False).x
                         for j in range(n)])
        torch.testing.assert_close(one, two, rtol=1e-9, atol=1e-9)


def test_progressive_stages_halve_on_a_nested_grid() -> None:
    assert stage_counts(64, 4) == [32, 16, 8, 4]
    schedule = dk.EDMSchedule()
    t, mid, nxt = teacher_times("uniform_angle", schedule, 4)
    torch.testing.assert_close(t, dk.make_grid("uniform_angle", schedule, 4).t[:-1])
    assert bool((t > mid).all() and (mid > nxt).all()) and float(nxt[-1]) == 0.0
    with pytest.raises(ValueError, match="grid rule 'karras' is not nested.*allowed: uniform_angle"):
        teacher_times("karras", schedule, 4)
    with pytest.raises(ValueError, match="must be 4 times a power of 2 above 4"):
        stage_counts(24, 4)


def test_a_teacher_step_refuses_a_stochastic_solver() -> None:
    oracle = smooth_mixture(dk.EDMSchedule())
    with pytest.raises(ValueError, match="deterministic fixed-step solver with per-sample times, got 'ddpm'"):
        SolverStep(oracle, "ddpm")
    with pytest.raises(ValueError, match="got 'unipc'"):
        SolverStep(oracle, "unipc")


def test_a_per_sample_heun_teacher_step_is_the_grid_step_of_each_sample() -> None:
    """One batch with a Heun interval, an Euler-only one (s0 / s1 = 20 > max_ratio) and the clean end:
    each row equals Heun on that row's own one-step grid (a Heun step as a teacher is Heun, not a copy)."""
    schedule = dk.EDMSchedule()
    oracle = smooth_mixture(schedule, dim=3)
    t0, t1 = torch.tensor([2.0, 10.0, 1.0], dtype=torch.float64), torch.tensor([1.5, 0.5, 0.0], dtype=torch.float64)
    x = schedule.add_noise(oracle.sample(3, seed=1), t0, torch.randn(3, 3, dtype=torch.float64))
    out = SolverStep(oracle, "heun")(x, t0, t1)
    heun = dk.make_solver("heun")
    for b in range(3):
        grid = dk.Grid.from_times(schedule, t0[b : b + 1] if t1[b] == 0 else torch.stack([t0[b], t1[b]]), t1[b] == 0)
        assert heun.nfe(grid) == (1 if b else 2)
        ref = dk.sample(oracle, heun, x[b : b + 1], grid=grid, progress=False).x
        torch.testing.assert_close(out[b : b + 1], ref, rtol=1e-12, atol=1e-12)


# ---- consistency models ------------------------------------------------------------------------


class ExactConsistency:
    """f*(x, t): the clean end of the exact PF-ODE trajectory through (x, t) (the oracle's reference ODE)."""

    def __init__(self, oracle: GaussianMixture, shift: float = 0.0) -> None:
        self.oracle, self.schedule = oracle, oracle.schedule
        self.theta = torch.tensor(shift, dtype=torch.float64, requires_grad=True)  # a parameter, 0 at f*

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: object = None) -> dk.Prediction:
        t = torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0])
        out = by_time(x, t, lambda xs, t0: self.oracle.ode_solution(xs, t0, rtol=1e-9, atol=1e-9))
        a, s = (v[:, None].to(x) for v in self.schedule.alpha_sigma(t))
        return dk.Prediction(x, a, s, x0=out + self.theta * x)


def by_time(x: torch.Tensor, t: torch.Tensor, fn, t1: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """fn(x[rows], t0[, t1]) for each group of rows sharing a time (the reference ODE takes one time)."""
    out = torch.empty_like(x)
    for value in t.unique().tolist():
        rows = t == value
        out[rows] = fn(x[rows], value) if t1 is None else fn(x[rows], value, float(t1[rows][0]))
    return out


def exact_step(oracle: GaussianMixture):  # type: ignore[no-untyped-def]
    def step(x: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor, cond: object = None) -> torch.Tensor:
        return by_time(x, t0, lambda xs, a, b: oracle.ode_solution(xs, a, b, rtol=1e-9, atol=1e-9), t1)

    return step


@pytest.mark.parametrize("training", [False, True])
def test_the_exact_consistency_function_is_a_fixed_point_of_the_consistency_loss(training: bool) -> None:
    """With the exact PF-ODE as teacher step (distillation), f* has zero loss and zero gradient; consistency
    training's target (same z) is a different point, so its loss is small but not zero. A function that
    is not a consistency function (Tweedie's denoiser) has a clearly positive distillation loss."""
    schedule = dk.EDMSchedule()
    oracle = smooth_mixture(schedule, dim=2)
    x0 = oracle.sample(6, seed=3)
    loss = ConsistencyLoss(schedule, None if training else exact_step(oracle), mu=0.0, n=4, total_steps=10,
                           distance="pseudo_huber")
    f = ExactConsistency(oracle)
    out = loss(f, x0, generator=torch.Generator().manual_seed(0))
    if training:
        assert float(out.loss.detach()) > 1e-4
        return
    assert float(out.loss.detach()) < 1e-9
    out.loss.backward()
    assert abs(float(f.theta.grad)) < 1e-5  # the reference ODE's tolerance over pseudo-Huber's c = 7.6e-4
    moved = ExactConsistency(oracle, shift=0.05)
    out = loss(moved, x0, generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert abs(float(moved.theta.grad)) > 1e-3
    tweedie = loss(oracle, x0, generator=torch.Generator().manual_seed(0))
    assert float(tweedie.loss) > 1e-3


def test_the_boundary_preconditioning_is_the_identity_at_sigma_min() -> None:
    from diffusekit.parameterization import ConsistencyParam, EDMParam

    p = ConsistencyParam()
    c = p.coefficients(torch.tensor([1.0]), torch.tensor([p.sigma_min]))
    assert float(c.c_skip) == 1.0 and float(c.c_out) == 0.0
    s = torch.tensor([0.3, 2.0])
    a, b = ConsistencyParam(sigma_min=0.0).coefficients(torch.ones(2), s), EDMParam().coefficients(torch.ones(2), s)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v)


@pytest.mark.parametrize("inner", ["eps", "v", "x0", "edm"])
def test_a_consistency_student_of_any_teacher_starts_as_its_denoiser(inner: str) -> None:
    """The boundary preconditioning wraps the teacher's parameterization: f(x, s_min) = x_hat exactly, and with
    the teacher's weights f is the teacher's x0 estimate wherever s >> s_min (eps teachers: DDPM, LCM's case)."""
    from diffusekit.models import mlp_preset
    from diffusekit.parameterization import consistency_name, make_parameterization

    param = make_parameterization(consistency_name(inner))
    alpha, sigma = torch.tensor([0.8, 0.3], dtype=torch.float64), torch.tensor([0.8 * 0.002, 0.3 * 0.002], dtype=torch.float64)
    c = param.coefficients(alpha, sigma)
    torch.testing.assert_close(c.c_skip * alpha, torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(c.c_out, torch.zeros(2, dtype=torch.float64))
    torch.manual_seed(0)
    net = mlp_preset("tiny", 2)
    torch.nn.init.normal_(net.out.weight, std=0.3)
    schedule = dk.VPSchedule()
    teacher, student = dk.Denoiser(net, schedule, inner), dk.Denoiser(net, schedule, param)
    x, t = torch.randn(6, 2), torch.linspace(0.3, 1.0, 6, dtype=torch.float64)  # s = sigma / alpha from 0.6 to 6.5
    f, d = student(x, t), teacher(x, t)
    x_hat = x / dk.utils.append_dims(f.alpha, 2)
    assert bool(((f.x0 - d.x0).abs() <= 0.01 * (x_hat.abs() + d.x0.abs())).all())  # f - D = a x_hat + (b - 1) D, small
    assert param.name == consistency_name(inner) and make_parameterization(param.name) == param


def test_one_step_consistency_sampling_of_the_exact_function_is_the_exact_ode_sample() -> None:
    schedule = dk.EDMSchedule()
    oracle = smooth_mixture(schedule, dim=2)
    f = ExactConsistency(oracle)
    x_T = oracle.sample(4, seed=1, t=schedule.t_max)
    one = dk.sample(f, dk.make_solver("consistency"), x_T, steps=1, progress=False)
    assert one.nfe == 1
    torch.testing.assert_close(one.x, oracle.ode_solution(x_T, schedule.t_max), rtol=1e-6, atol=1e-6)
    two = dk.sample(f, dk.make_solver("consistency"), x_T, steps=2, progress=False, seed=5)
    assert two.nfe == 2 and bool(two.x.isfinite().all())


def test_consistency_sampling_continues_from_a_projection_made_after_a_step() -> None:
    """The solver contract (tests/test_contracts.py): each step evaluates f at the x the loop hands it."""
    schedule = dk.EDMSchedule()
    oracle = smooth_mixture(schedule, dim=2)
    seen: list[torch.Tensor] = []

    def spy(x: torch.Tensor, t: float, cond: object = None) -> dk.Prediction:
        seen.append(x.clone())
        return oracle(x, t, cond)

    spy.schedule = schedule  # type: ignore[attr-defined]

    class Shift:
        def on_prediction(self, pred, t):  # type: ignore[no-untyped-def]
            return pred

        def after_step(self, x, step, ctx):  # type: ignore[no-untyped-def]
            return x + 1.0 if step.i == 0 else x

    dk.sample(spy, dk.make_solver("consistency"), shape=(2,), batch=3, steps=3, constraints=[Shift()], progress=False)
    plain: list[torch.Tensor] = []
    seen, kept = plain, seen
    dk.sample(spy, dk.make_solver("consistency"), shape=(2,), batch=3, steps=3, progress=False)
    torch.testing.assert_close(kept[1], plain[1] + 1.0)  # same noise, the projected x was used


def test_the_consistency_curriculum_and_levels() -> None:
    assert [curriculum(k, 800) for k in (0, 99, 100, 200, 799)] == [11, 11, 21, 41, 1281]
    t = consistency_times(dk.EDMSchedule(), 18, 0.002)
    assert float(t[0]) == pytest.approx(0.002) and float(t[-1]) == pytest.approx(80.0) and bool((t[1:] > t[:-1]).all())
    for schedule in (dk.VPSchedule(), dk.make_schedule("discrete")):  # s(t_max) ~ 150: sampling starts above 80
        assert float(consistency_times(schedule, 18, 0.002)[-1]) == pytest.approx(schedule.t_max)  # trained where sampled
    with pytest.raises(ValueError, match="unknown consistency distance 'lpips'; allowed: l2, pseudo_huber"):
        ConsistencyLoss(dk.EDMSchedule(), distance="lpips", mu=0.0)


@pytest.mark.slow  # three trainings with checkpoints and loss plots
def test_the_ema_target_network_is_checkpointed_and_resumed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The trainer keeps the loss's EMA target: 3 + 3 steps with a restart equal 6 in one go, target included."""
    from diffusekit.models import mlp_preset
    from diffusekit.parameterization import ConsistencyParam

    data = smooth_mixture(dk.EDMSchedule(), dim=2).sample(64, seed=0).float()

    def make(run_dir):  # type: ignore[no-untyped-def]
        torch.manual_seed(0)
        student = dk.Denoiser(mlp_preset("tiny", 2), dk.EDMSchedule(), ConsistencyParam())
        loss = ConsistencyLoss(student.schedule, None, student.net, mu=0.9, total_steps=6)
        cfg = TrainConfig(lr=1e-3, log_every=1, checkpoint_every=3, progress=False, ema_half_life=None)
        return Trainer(student, ArrayLoader(data, batch_size=16), loss, cfg, run_dir=run_dir), loss

    whole, whole_loss = make(tmp_path / "a")
    whole.fit(6)
    first, _ = make(tmp_path / "b")
    first.fit(3)
    second, second_loss = make(tmp_path / "b")
    assert second.resume() and second_loss.step == 3
    second.fit(6)
    assert second_loss.step == 6
    for a, b in zip(whole_loss.state_dict()["target"].values(), second_loss.state_dict()["target"].values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    changed = [not torch.equal(a, b) for a, b in zip(whole_loss.state_dict()["target"].values(),
                                                    make(tmp_path / "c")[1].state_dict()["target"].values())]
    assert any(changed)  # the target moved during training


def test_a_student_of_a_learned_variance_teacher_keeps_its_mean_and_drops_the_head() -> None:
    """No distillation loss trains a variance head, so the student has none (and its config says so): at
    initialisation it predicts the teacher's mean exactly, and `sample --solver ddpm` cannot use a stale head."""
    from diffusekit.config import PRESETS
    from diffusekit.distill.runs import student_config, student_of
    from diffusekit.pipeline import RunInfo, build_denoiser, build_network, check_variance_training

    teacher_cfg = PRESETS["toy2d"].with_overrides(["data.labels=true", "diffusion.schedule='discrete'",
                                                  "model.learn_variance=true", "diffusion.loss='hybrid'",
                                                  "diffusion.time_sampling='uniform'"])
    check_variance_training(teacher_cfg)
    info = RunInfo((2,), 3)
    torch.manual_seed(0)
    teacher = build_denoiser(teacher_cfg, info)
    torch.nn.init.normal_(teacher.net.out.weight)  # zero-initialised: give both halves of the output a value
    torch.nn.init.normal_(teacher.net.out.bias)
    cfg = student_config(teacher_cfg, name="s", steps=1, solver="ddim", nfe=2, grid=None, lr=1e-3)
    check_variance_training(cfg)
    assert not cfg.model.learn_variance and cfg.diffusion.loss == "simple"
    student = student_of(teacher, cfg, info)
    assert teacher.learns_variance and not student.learns_variance
    x, t, y = torch.randn(5, 2), torch.rand(5, dtype=torch.float64) * 0.9 + 0.05, torch.tensor([0, 1, 2, 3, 1])
    torch.testing.assert_close(student(x, t, y).x0, teacher(x, t, y).x0)
    build_network(cfg, info).load_state_dict(student.net.state_dict())  # the run folder loads (pipeline.load_run)


# ---- rectified flow and reflow -----------------------------------------------------------------


@pytest.mark.slow  # trains a small MLP for 400 steps (~10 s on an idle core)
def test_reflow_straightens_the_flow_and_improves_one_step_samples(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """On a 2-D two-mode toy, the exact rectified flow (the oracle's PF-ODE on the linear path) bends; a model
    trained on its noise/sample couplings is straighter (Liu et al. 2022, eq. 7) and its one Euler step lands
    near the modes, where the exact flow's one step lands at the mean between them."""
    from diffusekit.models import mlp_preset

    schedule = dk.FlowSchedule()
    oracle = GaussianMixture(torch.tensor([[2.0, 0.0], [-2.0, 0.5]]), 0.3, schedule)
    folder = generate_couplings(oracle, tmp_path / "pairs", 2048, (2,), nfe=20, shard_size=1024, progress=False)
    pairs, labels = load_couplings(folder)
    assert pairs.shape == (2048, 2, 2) and labels is None
    torch.manual_seed(0)
    student = dk.Denoiser(mlp_preset("tiny", 2), schedule, "velocity")
    cfg = TrainConfig(lr=3e-3, log_every=100, progress=False, ema_half_life=None)
    Trainer(student, ArrayLoader(pairs.float(), batch_size=256), ReflowLoss(), cfg).fit(400)
    student.eval()
    x_T = oracle.sample(256, seed=9, t=1.0).float()
    before = float(trajectory_straightness(oracle, x_T.double()).mean())
    after = float(trajectory_straightness(student, x_T).mean())
    assert after < 0.5 * before, (before, after)
    one = {name: dk.sample(den, dk.make_solver("euler"), x, steps=1, progress=False).x.double()
           for name, den, x in (("exact", oracle, x_T.double()), ("reflow", student, x_T))}
    quality = {k: float(oracle.log_prob(v).mean()) for k, v in one.items()}
    assert quality["reflow"] > quality["exact"] + 1.0, quality


def test_straightness_is_zero_exactly_for_straight_paths() -> None:
    times = torch.linspace(1, 0, 9, dtype=torch.float64)
    a, b = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    line = (times[:, None, None] * a + (1 - times[:, None, None]) * b)
    assert float(straightness(line, times).abs().max()) < 1e-24
    bent = line + torch.sin(torch.pi * times)[:, None, None]
    assert float(straightness(bent, times).min()) > 0.1


def test_couplings_resume_shard_by_shard_and_refuse_other_settings(tmp_path) -> None:  # type: ignore[no-untyped-def]
    oracle = GaussianMixture(torch.tensor([[1.0, 0.0]]), 0.5, dk.FlowSchedule())
    whole = load_couplings(generate_couplings(oracle, tmp_path / "a", 10, (2,), nfe=4, shard_size=4, progress=False))[0]
    generate_couplings(oracle, tmp_path / "b", 10, (2,), nfe=4, shard_size=4, progress=False)
    (tmp_path / "b" / "shard-00001.safetensors").unlink()  # an interrupted generation
    again = load_couplings(generate_couplings(oracle, tmp_path / "b", 10, (2,), nfe=4, shard_size=4, progress=False))[0]
    torch.testing.assert_close(whole, again, rtol=0, atol=0)
    with pytest.raises(ValueError, match="holds couplings made with .*allowed: the same settings"):
        generate_couplings(oracle, tmp_path / "b", 10, (2,), nfe=8, shard_size=4, progress=False)


# ---- the command line: distilled runs are ordinary runs ------------------------------------------


def cli(*args: str) -> tuple[int, str]:
    from click.testing import CliRunner

    from diffusekit.cli import main

    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A tiny class-conditional 2-D teacher (EDM) and a rectified flow on the same labelled data."""
    import numpy as np

    root = tmp_path_factory.mktemp("distill")
    g = torch.Generator().manual_seed(0)
    y = torch.arange(400) % 2
    x = (torch.randn(400, 2, generator=g) * 0.1 + torch.tensor([[0.6, 0.0], [-0.6, 0.3]])[y]).clamp(-1, 1)
    np.savez(root / "toy.npz", x=x.numpy(), y=y.numpy())
    common = ["--set", f"data.name='{root / 'toy.npz'}'", "--set", "data.labels=true", "--set", "steps=20",
              "--set", "checkpoint_every=20", "--set", "data.batch_size=64", "--quiet"]
    code, text = cli("train", "toy2d", *common, "--out", str(root / "edm"))
    assert code == 0, text
    code, text = cli("train", "toy2d", *common, "--set", "diffusion.schedule=flow", "--set", "diffusion.parameterization=velocity",
                     "--set", "diffusion.weighting=velocity", "--set", "diffusion.time_sampling=uniform", "--out", str(root / "rf"))
    assert code == 0, text
    return root


@pytest.mark.slow  # trains two toy teachers and four students for a few steps each
def test_distilled_runs_sample_evaluate_guide_and_solve_tasks(toy_runs) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    from diffusekit.pipeline import load_run
    from diffusekit.tasks import Mask, Replacement

    root = toy_runs
    jobs = {
        "pd": ("progressive", "1", str(root / "edm"), ["--from", "4", "--steps", "3"]),
        "cd": ("consistency", "2", str(root / "edm"), ["--steps", "3", "--solver", "euler"]),
        "ct": ("consistency-training", "1", str(root / "edm"), ["--steps", "3"]),
        "rf": ("reflow", "2", str(root / "rf"), ["--steps", "3", "--couplings", "80", "--one-step"]),
    }
    for name, (method, to, teacher, extra) in jobs.items():
        out = root / f"student-{name}"
        code, text = cli("distill", teacher, "--method", method, "--to", to, "--out", str(out), "--quiet", *extra)
        assert code == 0, text
        cfg = load_run(out).config
        nfe = 1 if name == "rf" else int(to)  # the one-step distilled flow samples in one step
        assert cfg.sampling.nfe == nfe and (out / "distill.json").is_file()
        code, text = cli("sample", str(out), "--n", "6", "--out", str(root / f"{name}.npy"))
        assert code == 0 and f"({nfe} NFE)" in text, text
        assert np.isfinite(np.load(root / f"{name}.npy")).all()
        code, text = cli("sample", str(out), "--n", "4", "--class", "1", "--cfg", "2", "--out", str(root / f"{name}-g.npy"))
        assert code == 0 and "CFG w=2" in text, text
        code, text = cli("eval", str(out), "--metrics", "sw", "--n", "40", "--quiet")
        assert code == 0, text
        run = load_run(out)
        mask = Replacement(Mask(torch.tensor([True, False])), torch.tensor([1.0]))
        sol = dk.sample(run.denoiser, dk.make_solver(cfg.sampling.solver), shape=(2,), batch=5, steps=cfg.sampling.nfe,
                        grid=cfg.sampling.grid, cond=torch.ones(5, dtype=torch.long), constraints=[mask], progress=False)
        torch.testing.assert_close(sol.x[:, 0], torch.ones(5))  # inpainting keeps the known coordinate
    assert (root / "student-pd" / "stages" / "4-to-2" / "checkpoints").is_dir()  # the stage-1 student taught stage 2
    assert load_run(root / "student-cd").config.diffusion.parameterization == "consistency"
    assert (root / "student-rf" / "stages" / "couplings-2" / "couplings.json").is_file()


def test_distill_command_refuses_unknown_methods_and_folders(tmp_path) -> None:  # type: ignore[no-untyped-def]
    for args, message in [
        ([str(tmp_path), "--method", "distil"], "unknown distillation method 'distil'; allowed: progressive, consistency"),
        ([str(tmp_path / "nowhere"), "--method", "progressive"], "run folder not found"),
        ([str(tmp_path), "--method", "reflow", "--solver", "heun"], "--solver applies to --method consistency only"),
    ]:
        code, text = cli("distill", *args)
        assert code == 2 and message in text and text.count("\n") == 1, (args, text)


@pytest.mark.slow  # needs the trained toy teachers
def test_distill_command_errors(toy_runs) -> None:  # type: ignore[no-untyped-def]
    edm, rf = str(toy_runs / "edm"), str(toy_runs / "rf")
    for args, message in [
        ([edm, "--method", "consistency", "--from", "8"], "--from applies to --method progressive only"),
        ([edm, "--method", "progressive", "--to", "4", "--from", "24"], "must be 4 times a power of 2"),
        ([edm, "--method", "reflow"], "reflow needs a rectified-flow run"),
        ([rf, "--method", "consistency"], "needs a schedule with alpha > 0 at t_max"),
        ([edm, "--method", "consistency", "--solver", "ddpm"], "deterministic fixed-step solver"),
        ([edm, "--method", "progressive", "--out", edm], "is the teacher's own run folder"),
        ([rf, "--method", "reflow", "--couplings", "10"], "--couplings must be at least the run's data.batch_size (64)"),
    ]:
        code, text = cli("distill", *args)
        assert code == 2 and message in text and text.count("\n") == 1, (args, text)
