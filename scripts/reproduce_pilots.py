"""Short pilots that chose the reproduction's settings (``scripts/paper/presets.py`` cites them).

    python scripts/reproduce_pilots.py timing                       # seconds per epoch, 1 thread
    python scripts/reproduce_pilots.py members --recipe dropout --members 4 --epochs 8
    python scripts/reproduce_pilots.py teacher --arch mlp --widths 1200 1200 --dropout 0.3 \
        --shift 1 --epochs 10
    python scripts/reproduce_pilots.py e1student --teacher runs/pilots/e1_teacher_300 --widths 800 800 \
        --epochs 30 --temperature 5 --alpha 0.9 --views 0 [--hard]
    python scripts/reproduce_pilots.py e3student --arch cnn --widths 16 32 --dropout 0.2 \
        --epochs 16 --lr 2e-3 --temperature 2 --alpha 0.5
    python scripts/reproduce_pilots.py e3student ... [--init-member 0] [--control] [--save DIR]
    python scripts/reproduce_pilots.py e5topn | e5weight | e5coverage --run runs/paper_v2
    python scripts/reproduce_pilots.py e5recipe --run runs/paper_v2 --epochs 15 --lr 1e-3 \\
        --shift 1 --alpha 0 --save runs/pilots/e5_shift1
    python scripts/reproduce_pilots.py e6views --run runs/paper_v2 --members 3 --view shift=1 \\
        mixup=0.2 --views 10 --epochs 10 --lr 3e-4 --temperature 2 --alpha 0.9
    python scripts/reproduce_pilots.py e6q --run runs/paper_v5 --members 3
    python scripts/reproduce_pilots.py disagreement --members-dir runs/paper_v2/e3/members
    python scripts/reproduce_pilots.py e4 --teacher runs/paper_v2/members/member_0 \
        --view shift=1 mixup=0.2 --temperature 4 --alpha 0.9 --views 64

Every model goes through the library (``train``, ``train_baseline``, ``ViewBatches``); nothing is
saved but the printed numbers (one JSON line per pilot, appended to ``--log`` when given), and
the members of ``members --save DIR`` (for ``e3student --members-dir DIR``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from paper.presets import FULL

from ensemble_kd import (
    DistillConfig,
    ModelSpec,
    TrainConfig,
    ViewConfig,
    distill,
    load_dataset,
    make_transfer_set,
    predict_logits,
    predict_probs,
    train_baseline,
)
from ensemble_kd.io import atomic_write_text, load_tensors, save_tensors
from ensemble_kd.metrics import accuracy, agreement, kl_divergence
from ensemble_kd.run import Run
from ensemble_kd.sweep import distill_sweep
from ensemble_kd.train import flush_denormals, seed_everything

# E3 member recipes tried by ``members``: (dropout, view settings); each member k gets view seed k
RECIPES = {
    "plain": (0.0, None),
    "dropout": (0.2, None),
    "shift1": (0.2, {"shift": 1}),
    "shift1_mixup": (0.2, {"shift": 1, "mixup": 0.2}),
    "crop1": (0.2, {"crop_padding": 1}),
    "crop2_flip": (0.2, {"crop_padding": 2, "flip": True}),
}


def _member(splits, widths, dropout, views, seed, epochs, lr, arch="mlp", run_dir=None):
    """One model (an MLP, or a cnn with ``widths`` as its channels) trained on hard labels over
    (unbounded) views, kept in ``run_dir`` when given: (model, CPU seconds per epoch, history).
    CPU time, not wall time: the machine is shared, the wall clock measures the load."""
    torch.manual_seed(seed)
    model = ModelSpec(arch, tuple(widths), dropout).build(splits.input_shape, splits.n_classes)
    cfg = TrainConfig(epochs=epochs, batch_size=128, lr=lr, seed=seed)
    t = time.process_time()
    res = train_baseline(model, make_transfer_set(splits), cfg, views=views, run_dir=run_dir,
                         progress=False)
    if run_dir is not None:
        Run(run_dir).finish(res.model, {"role": "member", "seed": seed})
    return res.model, (time.process_time() - t) / epochs, res.history


def members(args, splits) -> dict:
    dropout, view = RECIPES[args.recipe]
    if args.member_dropout is not None:
        dropout = args.member_dropout
    accs, probs, spe = [], [], []
    for k in range(args.members):
        views = None if view is None else ViewConfig(**view, views=None, seed=k)
        save = None if args.save is None else Path(args.save) / f"member_{k}"
        m, s, _ = _member(splits, args.widths, dropout, views, k, args.epochs, args.lr, args.arch,
                          save)
        p = predict_probs(m, splits.x_test)
        accs.append(accuracy(p, splits.y_test))
        probs.append(p)
        spe.append(s)
    ens = accuracy(torch.stack(probs).mean(0), splits.y_test)
    mean = sum(accs) / len(accs)
    return {"pilot": "members", "arch": args.arch, "recipe": args.recipe, "dropout": dropout,
            "widths": args.widths, "epochs": args.epochs,
            "lr": args.lr, "members": accs, "mean_member": mean, "ensemble": ens,
            "gain_points": 100 * (ens - mean), "cpu_seconds_per_epoch": sum(spe) / len(spe)}


def teacher(args, splits) -> dict:
    views = ViewConfig(shift=args.shift, views=None) if args.shift else None
    torch.manual_seed(0)
    model = ModelSpec(args.arch, tuple(args.widths), args.dropout).build(splits.input_shape,
                                                                         splits.n_classes)
    cfg = TrainConfig(epochs=args.epochs, batch_size=128, lr=args.lr, seed=0,
                      early_stopping=args.early_stopping)
    t = time.process_time()
    run_dir = None if args.save is None else Path(args.save)  # resumes when it exists
    best = {"val_acc": -1.0, "epoch": 0}
    best_path = None if run_dir is None else run_dir / "best_val_acc.pt"
    if best_path is not None and best_path.exists():  # resumed: the best epoch so far
        best = load_tensors(best_path)["info"]

    def keep_best(record: dict) -> None:
        """``--keep-best-acc``: the weights of the best validation accuracy so far."""
        if args.keep_best_acc and record["val_acc"] > best["val_acc"]:
            best.update(val_acc=record["val_acc"], epoch=record["epoch"])
            if best_path is not None:
                save_tensors(best_path, {"info": dict(best), "state": model.state_dict()})

    res = train_baseline(model, make_transfer_set(splits), cfg, views=views,
                         val=(splits.x_val, splits.y_val), run_dir=run_dir, progress=False,
                         on_epoch_end=keep_best)
    if run_dir is not None:
        Run(run_dir).finish(res.model, {"role": "teacher", "seed": 0})
    test_acc = accuracy(predict_probs(res.model, splits.x_test), splits.y_test)  # the last epoch's
    best_test = None
    if best_path is not None and best_path.exists():  # its own run folder, for e1student
        b = load_tensors(best_path)
        model.load_state_dict(b["state"])
        model.eval()
        Run(run_dir.with_name(run_dir.name + "_best_acc")).finish(
            model, {"role": "teacher", "seed": 0, "best_epoch": b["info"]["epoch"]})
        best_test = accuracy(predict_probs(model, splits.x_test), splits.y_test)
    return {"pilot": "teacher", "arch": args.arch, "widths": args.widths, "dropout": args.dropout,
            "shift": args.shift, "epochs": args.epochs, "lr": args.lr,
            "early_stopping": args.early_stopping, "best_epoch": res.best_epoch,
            "val_acc": res.history[res.best_epoch - 1]["val_acc"],
            "val_curve": [round(r["val_acc"], 4) for r in res.history],
            "val_nll_curve": [round(r["val_nll"], 4) for r in res.history],
            "best_acc": best, "best_acc_test": best_test,
            "test_acc": test_acc,
            "cpu_seconds_per_epoch": (time.process_time() - t) / args.epochs}


def _saved_members(folder: str) -> list[torch.nn.Module]:
    """The finished models ``folder/member_k`` of a run, in the order of k."""
    found = sorted(Path(folder).glob("member_*"), key=lambda f: int(f.name.split("_")[1]))
    models = [Run(f).load_finished("cpu") for f in found]
    if not models or any(m is None for m in models):
        raise SystemExit(f"{folder}: no finished member_k models there")
    return [m[0] for m in models]


def _view_settings(items: list[str]) -> dict:
    """``["shift=1", "mixup=0.2"]`` -> ViewConfig keyword arguments."""
    view = {}
    for item in items:
        key, _, value = item.partition("=")
        view[key] = {"flip": lambda v: v.lower() in ("1", "true")}.get(
            key, float if key in ("mixup", "cutmix", "noise") else int)(value)
    return view


def spec_dropout(args) -> float:
    """E4's student dropout: ``--dropout``, else the members' (the full preset's)."""
    return FULL.members_dropout if args.dropout is None else args.dropout


def e4(args, splits) -> dict:
    """E4's 3% student (subset 0, the full preset's MLP members' model) distilled on one view
    recipe from a saved teacher; validation accuracy of the best epoch, as E4's sweep chooses."""
    teacher = Run(Path(args.teacher)).load_finished("cpu")
    if teacher is None:
        raise SystemExit(f"{args.teacher}: no finished model there")
    view = _view_settings(args.view)
    views = ViewConfig(**view, views=args.views, seed=0)
    ts = make_transfer_set(splits, fraction=FULL.e4_fraction, seed=0)
    cfg = DistillConfig(temperature=args.temperature, alpha=args.alpha, views=views)

    def make():
        seed_everything(0)
        spec = ModelSpec("mlp", FULL.members_widths, spec_dropout(args))
        return spec.build(splits.input_shape, splits.n_classes)

    if args.hard:  # the fair baseline: hard labels on the same views and budget, no stopping
        res = train_baseline(make(), ts, TrainConfig(epochs=args.epochs, batch_size=128,
                                                     lr=args.lr, seed=0),
                             views=views, val=(splits.x_val, splits.y_val), progress=False)
        return {"pilot": "e4", "hard": True, "view": view, "views": args.views,
                "epochs": args.epochs, "lr": args.lr, "dropout": spec_dropout(args),
                "val_acc": max(r["val_acc"] for r in res.history),
                "best_epoch": 1 + max(range(len(res.history)),
                                      key=lambda i: res.history[i]["val_acc"])}
    with tempfile.TemporaryDirectory(prefix="e4-pilot-") as folder:
        res = distill_sweep(make, [teacher[0]], ts, TrainConfig(epochs=args.epochs, batch_size=128,
                                                                 lr=args.lr, seed=0),
                            [cfg], val=(splits.x_val, splits.y_val), run_dir=Path(folder),
                            device="cpu", progress=False)
    c = res.candidates[res.best]
    return {"pilot": "e4", "view": view, "views": args.views, "temperature": args.temperature,
            "alpha": args.alpha, "epochs": args.epochs, "lr": args.lr,
            "dropout": spec_dropout(args), "val_acc": c.val_acc}


def _train_student(student, teachers, splits, train_cfg: TrainConfig, distill_cfg: DistillConfig,
                   hard: bool, save: str | None, val=None):
    """``student`` distilled from ``teachers`` (``distill_cfg``), or with ``hard`` its fair
    baseline: hard labels alone on the same views (``distill_cfg.views``) and budget. Run folder
    (and teacher cache) in ``save`` (kept, and resumed) or a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="pilot-") as tmp:
        folder = Path(tmp if save is None else save)
        if hard:
            return train_baseline(student, make_transfer_set(splits), train_cfg,
                                  views=distill_cfg.views, val=val, run_dir=folder / "run",
                                  progress=False)
        return distill(student, teachers, make_transfer_set(splits), train_cfg, distill_cfg,
                       val=val, run_dir=folder / "run", cache_dir=folder / "cache",
                       progress=False)


def e1student(args, splits) -> dict:
    """E1's unregularised student (MLP ``--widths``, dropout ``--dropout``, seed ``--seed``) on
    the whole training set, distilled from the saved teacher ``--teacher`` at ``--temperature``,
    ``--alpha`` for ``--epochs`` (``--views`` V cached views of ``--view`` per image; 0: the plain
    images), or with ``--hard`` its fair baseline: hard labels on the same inputs and budget.
    Validation accuracy at the end and at the best epoch, test accuracy at the end."""
    teacher = Run(Path(args.teacher)).load_finished("cpu")
    if teacher is None and not args.hard:  # the fair baseline needs no teacher
        raise SystemExit(f"{args.teacher}: no finished model there")
    view = _view_settings(args.view) if args.views else {}
    views = ViewConfig(**view, views=args.views, seed=0) if args.views else None
    seed_everything(args.seed)
    student = ModelSpec("mlp", tuple(args.widths), args.dropout).build(splits.input_shape,
                                                                       splits.n_classes)
    train_cfg = TrainConfig(epochs=args.epochs, batch_size=128, lr=args.lr, seed=args.seed)
    cfg = DistillConfig(temperature=args.temperature, alpha=args.alpha, views=views)
    val = (splits.x_val, splits.y_val)
    t = time.process_time()
    res = _train_student(student, None if teacher is None else [teacher[0]], splits, train_cfg,
                         cfg, args.hard, args.save, val)
    curve = [r["val_acc"] for r in res.history]
    teacher_test = (None if teacher is None
                    else accuracy(predict_probs(teacher[0], splits.x_test), splits.y_test))
    return {"pilot": "e1student", "hard": args.hard, "teacher": args.teacher,
            "widths": args.widths, "dropout": args.dropout, "seed": args.seed, "view": view,
            "views": args.views, "T": None if args.hard else args.temperature,
            "alpha": None if args.hard else args.alpha, "epochs": args.epochs, "lr": args.lr,
            "val_acc": curve[-1], "best_val_acc": max(curve),
            "best_epoch": 1 + curve.index(max(curve)),
            "val_curve": [round(v, 4) for v in curve],
            "teacher_test": teacher_test,
            "test_acc": accuracy(predict_probs(res.model, splits.x_test), splits.y_test),
            "cpu_seconds_per_epoch": (time.process_time() - t) / args.epochs}


def e3student(args, splits) -> dict:
    """One E3 student (seed 10, like the run's first) of ``--arch``/``--widths`` with dropout
    ``--dropout`` distilled for ``--epochs`` from the saved members in ``--members-dir`` (T
    ``--temperature``, alpha ``--alpha``; the plain images, or with ``--student-views V`` V cached
    views of ``--view`` per image); test accuracy beside the members'."""
    members = _saved_members(args.members_dir)
    seed_everything(10)
    student = ModelSpec(args.arch, tuple(args.widths), args.dropout).build(splits.input_shape,
                                                                           splits.n_classes)
    if args.init_member is not None:  # warm start (Stanton et al. 2021: fidelity from init)
        if not 0 <= args.init_member < len(members):
            raise SystemExit(f"--init-member {args.init_member}: {args.members_dir} has members "
                             f"0-{len(members) - 1}")
        student.load_state_dict(members[args.init_member].state_dict())
    views = (ViewConfig(**_view_settings(args.view), views=args.student_views, seed=0)
             if args.student_views else None)
    cfg = DistillConfig(temperature=args.temperature, alpha=args.alpha, views=views)
    train_cfg = TrainConfig(epochs=args.epochs, batch_size=128, lr=args.lr, seed=10)
    t = time.process_time()
    # --control: the same start and budget on hard labels (and views) alone
    res = _train_student(student, members, splits, train_cfg, cfg, args.control, args.save)
    if args.save is not None:
        Run(Path(args.save) / "run").finish(res.model, {"role": "e3 student", "seed": 10})
    accs = [accuracy(predict_probs(m, splits.x_test), splits.y_test) for m in members]
    ens = accuracy(torch.stack([predict_probs(m, splits.x_test) for m in members]).mean(0),
                   splits.y_test)
    return {"pilot": "e3student", "arch": args.arch, "widths": args.widths, "epochs": args.epochs,
            "lr": args.lr, "T": args.temperature, "alpha": args.alpha, "dropout": args.dropout,
            "views": None if views is None else views.as_dict(), "members": len(members),
            "init_member": args.init_member, "control": args.control,
            "init_member_acc": None if args.init_member is None else accs[args.init_member],
            "mean_member": sum(accs) / len(accs), "ensemble": ens,
            "student": accuracy(predict_probs(res.model, splits.x_test), splits.y_test),
            "student_val": accuracy(predict_probs(res.model, splits.x_val), splits.y_val),
            "mean_member_val": sum(accuracy(predict_probs(m, splits.x_val), splits.y_val)
                                   for m in members) / len(members),
            "cpu_seconds_per_epoch": (time.process_time() - t) / args.epochs}


def disagreement(args, splits) -> dict:
    """How much the saved members of ``--members-dir`` know beyond the labels, on the training
    images (E3's transfer set) and on the test images: member and ensemble accuracy, the
    ensemble's mean top probability, and the share of images on which the members disagree.
    With ``--students RUN ...`` (finished run folders, e.g. E3's students), each one's fidelity
    to the ensemble there too: accuracy, agreement with the ensemble's top class and
    KL(ensemble || model) at T = 1 (nats)."""
    members = _saved_members(args.members_dir)
    students = {}
    for folder in args.students:
        done = Run(Path(folder)).load_finished("cpu")
        if done is None:
            raise SystemExit(f"{folder}: no finished model there")
        students[folder] = done[0]
    out = {"pilot": "disagreement", "members_dir": args.members_dir, "members": len(members)}
    for name, x, y in (("train", splits.x_train, splits.y_train),
                       ("test", splits.x_test, splits.y_test)):
        probs = torch.stack([predict_probs(m, x) for m in members])  # (K, N, C)
        top = probs.argmax(2)  # (K, N)
        ens = probs.mean(0)  # (N, C)
        out[name] = {"mean_member": (top == y).double().mean().item(),
                     "ensemble": (ens.argmax(1) == y).double().mean().item(),
                     "ensemble_top_prob": ens.max(1).values.mean().item(),
                     "disagree": (top != top[:1]).any(0).double().mean().item()}
        for folder, model in students.items():
            q = predict_probs(model, x)  # (N, C)
            out[name][folder] = {"acc": accuracy(q, y), "agreement": agreement(q, ens),
                                 "kl_to_ensemble": kl_divergence(ens, q)}
    return out


def _e5_errors(splits, run_dir: str, variants: dict[str, tuple[int, int]],
               specialists_dir: Path | None = None) -> dict:
    """Test and validation errors of E5's saved generalists, alone and combined with their saved
    specialists as each variant says: name -> (top_n, weight), the specialists of the top_n most
    probable classes active, each counted ``weight`` times in the combination (an integer weight
    on its KL term). Pooled over the generalists; inference only. ``specialists_dir``: the
    ``generalist_g`` folders of other specialists than E5's (``e5recipe``)."""
    from specialists import combine_predictions, load_specialists, specialist_probs

    run = Path(run_dir)
    root = run / "e5" if specialists_dir is None else specialists_dir
    folders = sorted(root.glob("generalist_*"), key=lambda f: int(f.name.split("_")[1]))
    if not folders:
        raise SystemExit(f"{root}: no generalist_g folders there")
    generalists = _saved_members(str(run / "members"))
    errors: dict[str, dict[str, int]] = {"val": {}, "test": {}}
    for f in folders:
        gen = generalists[int(f.name.split("_")[1])]
        sps = load_specialists(f)
        subsets = [sp.subset for sp in sps]
        for name, x, y in (("val", splits.x_val, splits.y_val), ("test", splits.x_test,
                                                                 splits.y_test)):
            p_g = predict_probs(gen, x)
            p_ms = specialist_probs(sps, x)
            err = errors[name]
            err["generalist"] = err.get("generalist", 0) + int((p_g.argmax(1) != y).sum())
            for key, (n, w) in variants.items():
                q = combine_predictions(p_g, list(p_ms) * w, list(subsets) * w, top_n=n)
                err[key] = err.get(key, 0) + int((q.argmax(1) != y).sum())
    out = {"run": run_dir, "generalists": len(folders)}
    for name, err in errors.items():
        base = err["generalist"]
        out[name] = {"generalist_errors": base, **{
            key: {"errors": err[key], "relative_error_reduction": round(1 - err[key] / base, 5)}
            for key in variants}}
    return out


def e5topn(args, splits) -> dict:
    """E5's saved generalists and specialists (``--run``: the reproduction's folder) combined with
    the specialists of the ``n`` most probable classes active, n in 1, 2, 3: the pooled relative
    error reduction on validation and on test, per n. Inference only."""
    return {"pilot": "e5topn", **_e5_errors(splits, args.run, {f"top_{n}": (n, 1) for n in (1, 2, 3)})}


def e5weight(args, splits) -> dict:
    """As ``e5topn`` with n = 1, each active specialist's KL term weighted 1, 2, 3 or 4 (the
    paper: 1), i.e. how far the combination should trust the specialists. Inference only."""
    variants = {f"weight_{w}": (1, w) for w in (1, 2, 3, 4)}
    return {"pilot": "e5weight", **_e5_errors(splits, args.run, variants)}


def e5recipe(args, splits) -> dict:
    """E5's specialists trained again with another recipe, for each of E5's generalists and its
    subsets (``--run``'s ``e5/generalist_g/subsets.json``), into ``--save DIR/generalist_g``
    (resumes): ``--epochs``, ``--lr``, ``--shift`` (random input shifts, px), ``--alpha`` (weight
    of the generalist's soft targets at ``--temperature``) and ``--share`` (of each batch from
    the subset). The pooled relative error reduction on validation and test, top-n = 1, as E5."""
    from ensemble_kd.io import read_json
    from specialists import SpecialistConfig, train_specialists

    if args.save is None:
        raise SystemExit("e5recipe: give --save DIR for the specialists (it resumes)")
    run, save = Path(args.run), Path(args.save)
    generalists = _saved_members(str(run / "members"))
    folders = sorted((run / "e5").glob("generalist_*"), key=lambda f: int(f.name.split("_")[1]))
    if not folders:
        raise SystemExit(f"{run / 'e5'}: no generalist_g folders there")
    spec_cfg = SpecialistConfig(alpha=args.alpha, temperature=args.temperature, jitter=args.shift,
                                share=args.share)
    t = time.process_time()
    for f in folders:
        g = int(f.name.split("_")[1])
        subsets = read_json(f / "subsets.json")["subsets"]
        train_specialists(generalists[g], subsets, splits,
                          TrainConfig(epochs=args.epochs, batch_size=FULL.batch_size,
                                      lr=args.lr, seed=g),
                          spec_cfg, save / f.name, progress=False)
    out = _e5_errors(splits, args.run, {"top_1": (1, 1)}, specialists_dir=save)
    return {"pilot": "e5recipe", "epochs": args.epochs, "lr": args.lr, "shift": args.shift,
            "alpha": args.alpha, "temperature": args.temperature, "share": args.share,
            "cpu_seconds": round(time.process_time() - t, 1), **out}


def e6views(args, splits) -> dict:
    """E6 with q computed on augmented views: for the first ``--members`` of E5's generalists
    (``--run``), generalist + specialists (top-n = 1, as E6) are run on ``--views`` cached views
    (``--view``) of the training set, and a copy of the generalist is distilled on that q (T
    ``--temperature``, alpha ``--alpha``, ``--epochs`` at ``--lr``, seed g); the control is the
    generalist trained on hard labels on the very same views and budget
    (``specialists.distill_specialists`` with ``MergeConfig(views=..., control="labels")``).
    Pooled validation and test accuracy of generalist, control, combined and merged, and the
    share of the specialists' gain over the control that the merged model keeps. ``--save DIR``
    keeps the models and view caches (resumes)."""
    from specialists import MergeConfig, distill_specialists, load_specialists

    run = Path(args.run)
    generalists = _saved_members(str(run / "members"))
    folders = _e5_folders(run, args)
    views = (ViewConfig(**_view_settings(args.view), views=args.views, seed=0) if args.views
             else None)  # --views 0: q on the training images themselves, as E6
    cfg = MergeConfig(temperature=args.temperature, alpha=args.alpha, top_n=1, control="labels",
                      views=views)
    ts = make_transfer_set(splits)
    correct: dict[str, dict[str, int]] = {"val": {}, "test": {}}
    t = time.process_time()
    with tempfile.TemporaryDirectory(prefix="e6-pilot-") as tmp:
        root = Path(args.save or tmp)
        for f in folders:
            g = int(f.name.split("_")[1])
            gen = generalists[g]
            tc = TrainConfig(epochs=args.epochs, batch_size=FULL.batch_size, lr=args.lr, seed=g)
            merged, control, combined, _ = distill_specialists(gen, load_specialists(f), ts, tc,
                                                               cfg, root / f.name)
            systems = {"generalist": gen, "control": control, "combined": combined,
                       "merged": merged}
            for name, x, y in (("val", splits.x_val, splits.y_val),
                               ("test", splits.x_test, splits.y_test)):
                for key, model in systems.items():
                    model.eval()
                    with torch.no_grad():
                        ok = int((model(x).argmax(1) == y).sum())
                    correct[name][key] = correct[name].get(key, 0) + ok
    out = {"pilot": "e6views", "view": args.view if args.views else "plain", "views": args.views,
           "epochs": args.epochs, "lr": args.lr, "temperature": args.temperature, "alpha": args.alpha,
           "generalists": len(folders), "cpu_seconds": round(time.process_time() - t, 1)}
    for name, c in correct.items():
        gain = c["combined"] - c["control"]
        out[name] = {**c, "gain_kept": round((c["merged"] - c["control"]) / gain, 4)
                     if gain else None}
    return out


def _e5_folders(run: Path, args) -> list[Path]:
    """E5's ``generalist_g`` folders in ``run``: those of ``--generalists`` (g values), else the
    first ``--members``."""
    folders = sorted((run / "e5").glob("generalist_*"), key=lambda f: int(f.name.split("_")[1]))
    if args.generalists is None:
        folders = folders[:args.members]
    else:
        folders = [f for f in folders if int(f.name.split("_")[1]) in set(args.generalists)]
    if not folders:
        raise SystemExit(f"{run / 'e5'}: no generalist_g folders there")
    return folders


def e6q(args, splits) -> dict:
    """What q says beyond the generalist, per split: for E5's generalists in ``--run``
    (``--generalists``, else the first ``--members``), the generalist's and the combination's
    (top-n = 1, as E6) accuracy, mean KL(q || p_g) (nats) and the share of examples whose arg-max
    differs, on the training images (E6's transfer set), the validation and the test images. If q
    says little beyond p_g where the merged model learns from it, the merge has nothing to learn
    there."""
    from specialists import CombinedModel, load_specialists

    run = Path(args.run)
    generalists = _saved_members(str(run / "members"))
    folders = _e5_folders(run, args)
    rows = []
    for f in folders:
        g = int(f.name.split("_")[1])
        sps = load_specialists(f)
        combined = CombinedModel(generalists[g], [s.model for s in sps], [s.subset for s in sps],
                                 top_n=1)  # its "logits" are log q
        for name, x, y in (("train", splits.x_train, splits.y_train),
                           ("val", splits.x_val, splits.y_val),
                           ("test", splits.x_test, splits.y_test)):
            log_pg = torch.log_softmax(predict_logits(generalists[g], x), -1)  # (N, C)
            log_q = predict_logits(combined, x)
            rows.append({"generalist": g, "split": name,
                         "generalist_acc": accuracy(log_pg, y),
                         "combined_acc": accuracy(log_q, y),
                         "kl_q_pg": float((log_q.exp() * (log_q - log_pg)).sum(1).mean()),
                         "argmax_differs": float((log_q.argmax(1) != log_pg.argmax(1)).float().mean()),
                         "generalist_top_p": float(log_pg.max(1).values.exp().mean())})
    return {"pilot": "e6q", "generalists": len(folders), "rows": rows}


def _fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The temperature T > 0 minimising the NLL of ``targets`` under softmax(logits / T):
    a convex problem in 1/T, solved by Brent's method on log T in [-3, 3]."""
    from scipy.optimize import minimize_scalar

    z, t = logits.double(), targets.long()

    def nll(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(z / float(torch.tensor(log_t).exp()), t))

    return float(torch.tensor(minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded",
                                              options={"xatol": 1e-6}).x).exp())


def e5coverage(args, splits) -> dict:
    """Where E5's gain goes, for ``--run``'s saved generalists and specialists (top-n = 1):
    per number of specialists covering the true class and per class, the generalist's and the
    combined correct counts on validation and test, and precision and recall per class. Three
    variants: the specialists as trained ("paper"); each specialist's (corrected) logits
    divided by a temperature fitted on the validation split's NLL ("calibrated": a
    specialist sure of itself counts for less); a temperature and a bias per output fitted
    there ("vector_scaled", ``specialists.fit_vector_scaling``; validation scored cross-fitted
    on its two halves). Pooled over the generalists (``active_per_example``: their mean);
    inference only."""
    from ensemble_kd.predict import predict_logits
    from specialists import (
        active_specialists,
        combine_predictions,
        fit_vector_scaling,
        load_specialists,
        specialist_targets,
    )

    def scaled(z: torch.Tensor, fit: tuple) -> torch.Tensor:
        return z * fit[0] + torch.as_tensor(fit[1], dtype=z.dtype)

    run = Path(args.run)
    folders = sorted((run / "e5").glob("generalist_*"), key=lambda f: int(f.name.split("_")[1]))
    if not folders:
        raise SystemExit(f"{run / 'e5'}: no generalist_g folders there")
    generalists = _saved_members(str(run / "members"))
    c = splits.n_classes
    stats: dict = {}
    temps = []
    for f in folders:
        gen = generalists[int(f.name.split("_")[1])]
        sps = load_specialists(f)
        subsets = [sp.subset for sp in sps]
        logits = {name: [predict_logits(sp.model, x) for sp in sps]
                  for name, x in (("val", splits.x_val), ("test", splits.x_test))}
        t_m = [_fit_temperature(z, specialist_targets(splits.y_val, sp.subset))
               for z, sp in zip(logits["val"], sps, strict=True)]
        temps.append([round(t, 3) for t in t_m])
        # vector scaling, cross-fitted on validation (each half scored with the other half's
        # fit), the test set with the fit on all of validation
        n_val = len(splits.y_val)
        halves = torch.arange(n_val) % 2 == 0
        vs = {"test": [], "val": []}
        for z_val, z_test, sp in zip(logits["val"], logits["test"], sps, strict=True):
            tg = specialist_targets(splits.y_val, sp.subset)
            vs["test"].append(scaled(z_test, fit_vector_scaling(z_val, tg)))
            out = torch.empty_like(z_val)
            for h in (halves, ~halves):
                out[h] = scaled(z_val[h], fit_vector_scaling(z_val[~h], tg[~h]))
            vs["val"].append(out)
        for name, x, y in (("val", splits.x_val, splits.y_val), ("test", splits.x_test,
                                                                 splits.y_test)):
            p_g = predict_probs(gen, x)
            active = active_specialists(p_g, subsets, 1)  # (N, M)
            cover = torch.zeros(len(y), dtype=torch.long)
            for s in subsets:
                cover += torch.isin(y, torch.tensor(s)).long()
            variants = {"generalist": p_g}
            for key, scale in (("paper", [1.0] * len(sps)), ("calibrated", t_m)):
                p_ms = [torch.softmax(z / t, -1) for z, t in zip(logits[name], scale,
                                                                     strict=True)]
                variants[key] = combine_predictions(p_g, p_ms, subsets, top_n=1)
            variants["vector_scaled"] = combine_predictions(
                p_g, [torch.softmax(z, -1) for z in vs[name]], subsets, top_n=1)
            st = stats.setdefault(name, {})
            for key, q in variants.items():
                pred = q.argmax(1)
                ok = pred == y
                row = st.setdefault(key, {"correct": 0, "by_coverage": {}, "recall": [0] * c,
                                          "predicted": [0] * c})
                row["correct"] += int(ok.sum())
                for k in cover.unique().tolist():
                    row["by_coverage"][str(k)] = row["by_coverage"].get(str(k), 0) + int(
                        ok[cover == k].sum())
                for k in range(c):
                    row["recall"][k] += int(ok[y == k].sum())
                    row["predicted"][k] += int((pred == k).sum())
            st["active_per_example"] = st.get("active_per_example", 0) + float(
                active.sum(1).float().mean()) / len(folders)
    return {"pilot": "e5coverage", "run": args.run, "generalists": len(folders),
            "temperatures": temps, **stats}


def timing(args, splits) -> dict:
    out = {"pilot": "timing", "unit": "CPU seconds per epoch, 54,000 images, batch 128"}
    for name, widths in (("mlp512", [512]), ("mlp2x512", [512, 512]), ("mlp2x800", [800, 800]),
                         ("mlp2x1200", [1200, 1200])):
        for vname, views in (("plain", None), ("shift1_mixup", ViewConfig(shift=1, mixup=0.2,
                                                                          views=None))):
            _, s, _ = _member(splits, widths, 0.0, views, 0, 1, 1e-3)
            out[f"{name}_{vname}"] = round(s, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pilot", choices=["timing", "members", "teacher", "e4", "e1student", "e3student",
                                          "disagreement", "e5topn", "e5weight", "e5recipe", "e6views",
                                          "e6q", "e5coverage"])
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="dropout")
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--generalists", type=int, nargs="+", default=None,
                    help="e6views, e6q: these of E5's generalists (default: the first --members)")
    ap.add_argument("--widths", type=int, nargs="+", default=[512, 512])
    ap.add_argument("--arch", default="mlp")
    ap.add_argument("--dropout", type=float, default=None,
                    help="the model's dropout (default: e4 the members' 0.2, else 0.3)")
    ap.add_argument("--member-dropout", type=float, default=None,
                    help="members: this dropout instead of the recipe's")
    ap.add_argument("--save", default=None,
                    help="members: keep member k in SAVE/member_k (resumes; e3student reads it); "
                         "teacher, e3student: keep the model (and cache) in SAVE (resumes)")
    ap.add_argument("--shift", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=None, help="default: 300 for e4 (its budget), "
                    "else 8")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--members-dir", default="runs/paper_v2/e3/members",
                    help="e3student, disagreement: the folder of the saved members")
    ap.add_argument("--students", nargs="*", default=[],
                    help="disagreement: run folders of finished models whose fidelity to the "
                         "members' ensemble is measured too")
    ap.add_argument("--teacher", default="runs/paper_v2/members/member_0",
                    help="e4, e1student: the teacher's run folder")
    ap.add_argument("--view", nargs="*", default=["shift=1", "mixup=0.2"],
                    help="e4, e1student: ViewConfig settings as name=value")
    ap.add_argument("--views", type=int, default=64,
                    help="e4, e1student, e6views: V cached views per image (e1student, e6views: 0 = "
                         "the plain images)")
    ap.add_argument("--hard", action="store_true",
                    help="e4, e1student: hard labels on the same views and budget, no early stopping "
                         "(the best epoch's validation accuracy)")
    ap.add_argument("--student-views", type=int, default=0,
                    help="e3student: V cached views of --view per image (0: the plain images)")
    ap.add_argument("--init-member", type=int, default=None,
                    help="e3student: start from member K's weights (same --arch/--widths)")
    ap.add_argument("--control", action="store_true",
                    help="e3student: hard labels only (train_baseline), the student's start and "
                         "budget: what extra training alone does")
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("--alpha", type=float, default=0.9)
    ap.add_argument("--share", type=float, default=0.5,
                    help="e5recipe: share of each specialist batch from its subset")
    ap.add_argument("--run", default="runs/paper_v2",
                    help="e5topn, e5weight, e5recipe: the reproduction's folder")
    ap.add_argument("--early-stopping", type=int, default=0,
                    help="teacher: patience in epochs on the validation NLL (best weights kept)")
    ap.add_argument("--seed", type=int, default=0, help="e1student: the student's seed")
    ap.add_argument("--keep-best-acc", action="store_true",
                    help="teacher: also keep the weights of the best validation accuracy "
                         "(SAVE/best_val_acc.pt; finished as the run SAVE_best_acc)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--log", default=None, help="append the JSON line to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    splits = load_dataset("fashion-mnist")
    t = time.perf_counter()
    if args.dropout is None and args.pilot != "e4":  # E1's student is unregularised
        args.dropout = 0.0 if args.pilot == "e1student" else 0.3
    if args.epochs is None:
        args.epochs = FULL.e4_epochs if args.pilot == "e4" else 8
    pilots = {"timing": timing, "members": members, "teacher": teacher, "e4": e4,
              "e1student": e1student, "e3student": e3student, "disagreement": disagreement, "e5topn": e5topn,
              "e5weight": e5weight, "e5recipe": e5recipe, "e6views": e6views, "e6q": e6q,
              "e5coverage": e5coverage}
    out = pilots[args.pilot](args, splits)
    out["wall_seconds"] = round(time.perf_counter() - t, 1)
    line = json.dumps(out)
    print(line, flush=True)
    if args.log:  # appended, rewritten atomically (a crash never leaves half a line)
        log = Path(args.log)
        atomic_write_text(log, (log.read_text() if log.exists() else "") + line + "\n")


if __name__ == "__main__":
    with flush_denormals():  # the worker threads started inside inherit the mode
        main()
