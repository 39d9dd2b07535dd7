"""The ``dpda`` command line. It only parses arguments and calls the library."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from dpda import __version__
from dpda.errors import DpdaError
from dpda.names import DATASET_KINDS, DIRECTIONS, PROTOCOL_KINDS

if TYPE_CHECKING:
    import torch

    from dpda.evaluate.evaluation import Detector

# The heavy libraries (torch, torchjd) are imported by the commands that need them, so that
# `dpda --version` and `dpda --help` answer at once.


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dpda",
        description=(
            "Train and evaluate speech deepfake detectors with dual-path data-augmented "
            "training and gradient alignment (Truong et al., ICASSP 2026)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"dpda {__version__}")
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    aligners = commands.add_parser("aligners", help="list the gradient aligners and their options")
    aligners.set_defaults(handler=_list_aligners)
    check = commands.add_parser(
        "validate",
        help="read a protocol and check that every audio file exists and decodes",
        description="Read a protocol, then check every audio file it names (in parallel); all "
        "problems are listed together. Exit status 1 when any file fails.",
    )
    check.add_argument("kind", choices=PROTOCOL_KINDS, help="protocol format")
    check.add_argument("protocol", type=Path, help="protocol file (or folder, for 'for' and 'folder')")
    check.add_argument(
        "--root", type=Path, help="dataset root the audio paths are relative to (default: the protocol's folder)"
    )
    check.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a reader option, e.g. path_template=flac/{utt_id}.flac or, for csv, "
        "label_column=is_fake; values of *_values options are comma-separated",
    )
    check.add_argument(
        "--header-only",
        action="store_true",
        help="read headers only (and the samples of float files, for NaN/inf), not every sample",
    )
    check.add_argument("--workers", type=int, default=None, help="parallel readers")
    check.set_defaults(handler=_validate)
    convert = commands.add_parser(
        "convert-fairseq",
        help="convert a fairseq wav2vec 2.0 / XLS-R checkpoint to a transformers folder",
        description="Convert a fairseq checkpoint (e.g. xlsr2_300m.pt) into a save_pretrained folder "
        "for the SSL front-end, without fairseq and without unpickling arbitrary objects.",
    )
    convert.add_argument("source", type=Path, help="the fairseq .pt file")
    convert.add_argument("destination", type=Path, help="the folder to write (must not exist)")
    convert.set_defaults(handler=_convert_fairseq)
    paper = commands.add_parser(
        "convert-paper",
        help="convert a released paper detector (.pth state dict) to a dpda checkpoint",
        description="Convert a state dict of the paper code's detectors (XLSR-Conformer-TCM, XLSR-AASIST, "
        "XLSR-Mamba; fairseq XLS-R under ssl_model.model., with or without DataParallel's "
        "module. prefix) into a dpda .safetensors checkpoint for dpda score, dpda eval and "
        "dpda train --set model.init=DST. No other file is needed, and nothing is unpickled "
        "but tensors.",
    )
    paper.add_argument("source", type=Path, help="the released .pth file")
    paper.add_argument("destination", type=Path, help="the checkpoint to write (.safetensors; must not exist)")
    paper.add_argument(
        "--model", required=True, metavar="NAME", help="the paper model: xlsr_conformer_tcm, xlsr_aasist or xlsr_mamba"
    )
    paper.set_defaults(handler=_convert_paper)
    _add_corpus_commands(commands)
    _add_train_command(commands)
    _add_evaluation_commands(commands)
    _add_fuse_command(commands)
    _add_package_command(commands)
    _add_export_command(commands)
    report = commands.add_parser(
        "report",
        help="a Markdown report with plots comparing training runs",
        description="Write OUT/report.md with PNG plots: path losses and dev loss, conflict rate and the "
        "cosine histogram, aligner weights, DET curves and score histograms per eval set, and "
        "a table of the runs side by side (mean +- std for multi-seed folders, the paper's "
        "EER where a config names a paper row).",
    )
    report.add_argument("runs", nargs="+", type=Path, help="run folders or multi-seed experiment folders")
    report.add_argument("--out", type=Path, required=True, help="folder for report.md and the figures")
    report.set_defaults(handler=_report)
    demo = commands.add_parser(
        "demo",
        help="the main job: DPDA with and without gradient alignment on the built-in corpus",
        description="Build the built-in corpus (if absent), train a detector per aligner on it, score the "
        "eval split (unseen attacks) and write DIR/report.md with plots and DIR/results.json. "
        "About 15 minutes on 2 CPU cores; --quick under 3. Re-running continues where it stopped.",
    )
    demo.add_argument("--out", type=Path, required=True, help="demo folder")
    demo.add_argument("--quick", action="store_true", help="smaller corpus and budget (under 3 minutes)")
    demo.add_argument(
        "--aligners",
        nargs="+",
        default=["mean", "pcgrad"],
        help="aligners to compare (mean = DPDA without alignment; also gradvac, cagrad, ...)",
    )
    demo.add_argument("--model", choices=("lfcc_lcnn", "aasist_l"), default="lfcc_lcnn")
    demo.add_argument("--seeds", type=int, nargs="+", default=[1], help="seeds per aligner (mean +- std)")
    demo.add_argument("--reference-model", type=Path, help="the published AASIST.pth, scored on the eval split")
    demo.set_defaults(handler=_demo)
    return parser


def _report(args: argparse.Namespace) -> int:
    from dpda.report import write_report

    try:
        path = write_report(args.runs, args.out)
    except OSError as error:
        raise _unusable(error) from error
    print(f"wrote {path}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from dpda.demo import run_demo

    try:
        run_demo(
            args.out,
            quick=args.quick,
            aligners=args.aligners,
            model=args.model,
            seeds=args.seeds,
            reference_model=args.reference_model,
        )
    except OSError as error:  # --out or --reference-model
        raise _unusable(error) from error
    return 0


def _add_evaluation_commands(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser(
        "eval",
        help="score a trained detector on its eval sets (or others) and compute the metrics",
        description="Score every configured eval set with a checkpoint (or a run folder's final model): "
        "score files (resumable), results.json and results.md with EER, per-attack EER, "
        'minDCF, actDCF and Cllr. Add sets with --set "eval.sets=[{kind: in_the_wild, '
        'protocol: /data/itw/meta.csv}]". A set with asv_scores (an ASV score file; asv_keys with it for '
        "the ASVspoof 2021 form) also gets min t-DCF 2019 and 2021, one with sasv_scores (a SASV score file) "
        "min a-DCF; both files are matched to the set's trials before anything is scored.",
    )
    evaluate.add_argument("source", type=Path, help="run folder or .safetensors checkpoint")
    evaluate.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="override a key of the checkpoint's config (eval.sets, eval.max_seconds, ...)",
    )
    evaluate.add_argument("--out", type=Path, help="output folder (default: SOURCE's folder /eval)")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    _add_trust_code(evaluate, "the checkpoint")
    evaluate.set_defaults(handler=_evaluate)
    score = commands.add_parser(
        "score",
        help="score audio files with a trained detector: JSON lines with a calibrated decision",
        description="Score any audio soundfile reads (any rate; folders are searched): one JSON line per "
        "file with the raw score, the calibrated probability that it is spoofed and the "
        "decision at the checkpoint's dev EER threshold. Unreadable files are reported "
        "one by one; the exit status is 1 when any was.",
    )
    score.add_argument("paths", nargs="+", type=Path, help="audio files or folders")
    score.add_argument("--model", type=Path, required=True, help="run folder or .safetensors checkpoint")
    score.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    score.add_argument(
        "--window",
        type=_positive_seconds,
        metavar="SECONDS",
        help="score long files window by window: per-segment scores with start and end times",
    )
    score.add_argument(
        "--hop", type=_positive_seconds, metavar="SECONDS", help="seconds between windows (default: half the window)"
    )
    score.add_argument(
        "--aggregate",
        choices=("mean", "min"),
        default="mean",
        help="the file's score from its windows': their mean, or the most spoof-like (min)",
    )
    _add_trust_code(score, "the checkpoint")
    score.set_defaults(handler=_score)
    landscape = commands.add_parser(
        "landscape",
        help="the loss surface around trained weights, original vs augmented inputs (Figure 3)",
        description="Evaluate the loss on a grid around the weights along two filter-normalised random "
        "directions (or the two path gradients), on dev utterances and on their augmented "
        "versions side by side; writes landscape.png and the raw grid landscape.npz.",
    )
    landscape.add_argument("source", type=Path, help="run folder or .safetensors checkpoint")
    landscape.add_argument("--directions", choices=DIRECTIONS, default="filter")
    landscape.add_argument("--points", type=int, default=21, help="grid points per axis (odd)")
    landscape.add_argument("--span", type=float, default=1.0, help="grid half-width in direction units")
    landscape.add_argument("--utterances", type=int, default=64, help="dev utterances the loss is taken over")
    landscape.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="override a key of the checkpoint's config, e.g. data.dev=...",
    )
    landscape.add_argument("--out", type=Path, help="output folder (default: SOURCE's folder /landscape)")
    landscape.add_argument("--device", default="auto")
    landscape.add_argument("--seed", type=int, default=0)
    _add_trust_code(landscape, "the checkpoint")
    landscape.set_defaults(handler=_landscape)


def _add_fuse_command(commands: argparse._SubParsersAction) -> None:
    fuse = commands.add_parser(
        "fuse",
        help="fuse and calibrate several systems' score files (logistic regression fitted on dev)",
        description="Fit fused = sum of w_i x score_i + b on the dev trials (prior-weighted logistic regression, "
        "as BOSARIS/FoCal: the fused scores are calibrated log-likelihood ratios, bona fide over spoof) and apply "
        "it to SCORES, one score file per system (as dpda eval writes them). Without --dev-scores, SCORES are the "
        "dev scores and --dev is their key; with it, SCORES are the same systems on other (eval) trials, in the "
        "same order. Writes OUT (a score file) and OUT with the suffix .json (weights, offset, prior, files, and "
        "the EER and Cllr of each system and of the fusion on dev, and on eval with --eval-key). All files are "
        "checked before the fit: trials that differ between files or from a key are named. Example: dpda fuse "
        "a_eval.txt b_eval.txt --dev-scores a_dev.txt b_dev.txt --dev ASVspoof2019.LA.cm.dev.trl.txt --out "
        "fused.txt (SCORES first: --dev-scores takes the files after it).",
    )
    fuse.add_argument("scores", nargs="+", type=Path, metavar="SCORES", help="the score files to fuse, one per system")
    fuse.add_argument(
        "--dev-key", "--dev", dest="dev_key", type=Path, required=True, metavar="KEY", help="the dev protocol (key)"
    )
    fuse.add_argument(
        "--dev-scores", nargs="+", type=Path, metavar="FILE", help="the systems' dev score files (default: SCORES)"
    )
    fuse.add_argument("--out", type=Path, required=True, help="the fused score file to write (e.g. fused_eval.txt)")
    fuse.add_argument("--eval-key", type=Path, metavar="KEY", help="the protocol of SCORES, for their EER and Cllr")
    for role, default in (("dev", "asvspoof2019"), ("eval", "the --dev-kind")):
        fuse.add_argument(f"--{role}-kind", choices=DATASET_KINDS, help=f"the {role} key's format (default: {default})")
        fuse.add_argument(
            f"--{role}-option",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help=f"an option of the {role} key's reader, as dpda validate --option (e.g. label_column=is_fake)",
        )
    fuse.add_argument(
        "--prior", type=float, default=0.5, help="the effective prior of bona fide the fit weights the classes to"
    )
    fuse.add_argument(
        "--l2", type=float, default=None, help="L2 weight on the standardised systems' weights (default 1e-4)"
    )
    fuse.add_argument("--overwrite", action="store_true", help="replace OUT (and its .json) where they exist")
    fuse.set_defaults(handler=_fuse)


def _fuse(args: argparse.Namespace) -> int:
    from dpda.config import DataSet
    from dpda.evaluate.fusion import DEFAULT_L2, fuse, fusion_markdown

    dev_kind = args.dev_kind or "asvspoof2019"
    dev = DataSet(dev_kind, str(args.dev_key), options=dict(map(_parse_option, args.dev_option)))
    eval_key = None
    if args.eval_key is not None:
        options = dict(map(_parse_option, args.eval_option))
        eval_key = DataSet(args.eval_kind or dev_kind, str(args.eval_key), options=options)
    elif args.eval_kind or args.eval_option:
        raise DpdaError("--eval-kind and --eval-option describe --eval-key: give it too")
    try:
        summary = fuse(
            args.scores,
            dev,
            args.out,
            dev_scores=args.dev_scores,
            eval_key=eval_key,
            prior=args.prior,
            l2=DEFAULT_L2 if args.l2 is None else args.l2,
            overwrite=args.overwrite,
        )
    except OSError as error:  # a score file missing or unreadable, OUT exists or cannot be written
        raise _unusable(error) from error
    print(fusion_markdown(summary))
    return 0


def _add_package_command(commands: argparse._SubParsersAction) -> None:
    package = commands.add_parser(
        "package",
        help="write a trained detector as a model package (Hugging Face layout, with a model card)",
        description="Write OUT (a new folder): model.safetensors with the checkpoint's metadata, config.json "
        "(architecture, sample rate, calibration, decision threshold, training, eval metrics) and README.md, "
        "the model card. dpda score, eval and serve and Detector.from_pretrained load it.",
    )
    package.add_argument("source", type=Path, help="run folder or .safetensors checkpoint")
    package.add_argument("out", type=Path, help="the package folder to write (must not exist)")
    package.add_argument(
        "--results",
        type=Path,
        action="append",
        default=[],
        help="a dpda eval results.json whose sets go into the card (besides the run's own)",
    )
    package.set_defaults(handler=_package)
    serve = commands.add_parser(
        "serve",
        help="serve a detector over HTTP: POST /v1/score, GET /v1/health, /v1/model, a web page at /",
        description="An HTTP service of SOURCE (a package, run folder or checkpoint): POST /v1/score takes an "
        "audio file (multipart field 'file') and answers its score, P(spoof) and decision, with segment scores "
        "for long audio; a web page at / to try files; OpenAPI docs at /docs. Needs dpda[serve].",
    )
    serve.add_argument("source", type=Path, help="model package, run folder or .safetensors checkpoint")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    serve.add_argument("--max-upload-mb", type=float, default=50.0, help="largest upload accepted")
    serve.add_argument("--max-seconds", type=float, default=600.0, help="longest audio accepted")
    serve.add_argument("--max-batch", type=int, default=8, help="short inputs scored in one forward pass")
    serve.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long an input waits for a batch")
    serve.add_argument("--max-concurrent", type=int, default=1, help="forward passes at once")
    serve.add_argument("--window", type=float, default=8.0, help="audio longer than this is scored in windows")
    serve.add_argument("--hop", type=float, default=4.0, help="seconds between windows")
    _add_trust_code(serve, "the checkpoint")
    serve.set_defaults(handler=_serve)


def _package(args: argparse.Namespace) -> int:
    from dpda.deploy.package import write_package

    try:
        out = write_package(args.source, args.out, args.results)
    except OSError as error:
        raise _unusable(error) from error
    print(out)
    return 0


def _serve(args: argparse.Namespace) -> int:
    try:
        from dpda.deploy.service import Limits, run
    except ImportError as error:
        needed = "pip install 'dpda[serve]'"
        raise DpdaError(f"dpda serve needs the serve extra ({error.name} is missing): {needed}") from None
    try:
        limits = Limits(
            max_upload_mb=args.max_upload_mb,
            max_seconds=args.max_seconds,
            max_concurrent=args.max_concurrent,
            max_batch=args.max_batch,
            batch_wait_ms=args.batch_wait_ms,
            window=args.window,
            hop=args.hop,
        )
    except ValueError as error:
        raise DpdaError(f"dpda serve: {error}") from None
    device = _device(args.device)
    run(_load_detector(args, args.source, device), device, args.host, args.port, limits)
    return 0


def _add_export_command(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser(
        "export",
        help="write a trained detector as one ONNX or TorchScript file, for runtimes without dpda",
        description="Write OUT: the detector as a graph from a float32 waveform batch (batch, samples) at the "
        "training sample rate to its logits (batch, 2) and raw score (batch,), with dynamic batch and length, "
        "checked against PyTorch on other shapes before it is written; beside it OUT with the suffix .json: "
        "the input and outputs, sample rate, score kind and calibration. ONNX needs dpda[export].",
    )
    export.add_argument("source", type=Path, help="model package, run folder or .safetensors checkpoint")
    export.add_argument("--format", required=True, choices=("onnx", "torchscript"), dest="fmt")
    export.add_argument("--out", type=Path, required=True, help="the file to write, e.g. model.onnx or model.pt")
    export.add_argument("--opset", type=int, help="the ONNX opset (default: the exporter's own)")
    export.add_argument("--overwrite", action="store_true", help="replace OUT (and its .json) where they exist")
    _add_trust_code(export, "the checkpoint")
    export.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> int:
    import torch

    from dpda.deploy.export import export_detector

    detector = _load_detector(args, args.source, torch.device("cpu"))
    try:
        out = export_detector(detector, args.out, args.fmt, opset=args.opset, overwrite=args.overwrite)
    except OSError as error:
        raise _unusable(error) from error
    print(out)
    return 0


def _add_trust_code(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--trust-code",
        action="store_true",
        help=f"let {what} name a model class to import (model 'custom'): that runs its code, so only "
        "for files you made or trust; without it such a file is refused",
    )


def _device(name: str) -> torch.device:
    import torch

    from dpda.train.build import Ranks, choose_device

    if name != "auto":
        try:
            torch.device(name)
        except RuntimeError as error:  # torch's "Expected one of cpu, cuda, ... device type at start of ..."
            raise DpdaError(f"--device {name}: {error}") from None
    return choose_device(name, Ranks())


def _load_detector(args: argparse.Namespace, source: Path, device: torch.device) -> Detector:
    """``load_detector`` of the checkpoint (or run folder) named on the command line."""
    from dpda.evaluate.evaluation import load_detector

    try:
        return load_detector(source, device, getattr(args, "overrides", ()), trust_code=args.trust_code)
    except OSError as error:
        raise _unusable(error) from error


def _evaluate(args: argparse.Namespace) -> int:
    from dpda.data.sets import DataError
    from dpda.evaluate.evaluation import checkpoint_path, evaluate_sets, read_eval_sets, results_markdown

    device = _device(args.device)
    detector = _load_detector(args, args.source, device)
    config = detector.config
    if not config.eval.sets:
        raise DataError(
            "no eval sets: the checkpoint's config has none; add them with "
            '--set "eval.sets=[{kind: ..., protocol: ...}]"'
        )
    out = args.out or checkpoint_path(args.source).parent / "eval"
    try:
        results = evaluate_sets(detector, read_eval_sets(config.eval.sets, config.data.validate), out, device)
    except OSError as error:  # --out (or SOURCE's folder) cannot be written
        raise _unusable(error) from error
    print(results_markdown(results) + f"\nwritten to {out}")
    return 0


def _landscape(args: argparse.Namespace) -> int:
    import json

    from dpda.evaluate.evaluation import checkpoint_path
    from dpda.landscape import checkpoint_landscape, plot_landscape, surface_sharpness

    device = _device(args.device)
    detector = _load_detector(args, args.source, device)
    surface = checkpoint_landscape(
        detector.model,
        detector.config,
        device,
        directions=args.directions,
        points=args.points,
        span=args.span,
        utterances=args.utterances,
        seed=args.seed,
    )
    out = args.out or checkpoint_path(args.source).parent / "landscape"
    out.mkdir(parents=True, exist_ok=True)
    surface.save(out / "landscape.npz")
    plot_landscape(surface, out / "landscape.png", title=f"{detector.config.name}: {args.directions} directions")
    print(json.dumps({"sharpness": surface_sharpness(surface), "figure": str(out / "landscape.png")}))
    return 0


def _score(args: argparse.Namespace) -> int:
    import json

    from dpda.evaluate.evaluation import score_files

    device = _device(args.device)
    detector = _load_detector(args, args.model, device)
    if detector.calibration is None:
        print("dpda score: this checkpoint has no calibration (no dev set); raw scores only", file=sys.stderr)
    windows = None
    if args.window is not None:
        from dpda.evaluate.segments import Windows

        hop = args.hop if args.hop is not None else args.window / 2
        try:
            windows = Windows(args.window, hop, detector.config.data.sample_rate)
        except ValueError as error:
            raise DpdaError(f"--window/--hop: {error}") from None
    elif args.hop is not None:
        raise DpdaError("--hop needs --window")
    failed = False
    for record in score_files(detector, args.paths, device, windows, args.aggregate):
        failed |= "error" in record
        print(json.dumps(record, allow_nan=False), flush=True)
    return 1 if failed else 0


def _add_train_command(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser(
        "train",
        help="train a detector with dual-path training and gradient alignment",
        description="Train from a YAML config (configs/default.yaml lists every key). The run folder "
        "(output_dir/name) gets the resolved config, checkpoints, the training state, logs "
        "and results.json. Several processes: torchrun --nproc_per_node N -m dpda train ...",
    )
    train.add_argument("config", nargs="?", type=Path, help="experiment YAML")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="override a config key, e.g. --set optim.lr=1e-5 (value in YAML)",
    )
    train.add_argument(
        "--seeds", type=int, nargs="+", help="train once per seed into output_dir/name/seed-N and summarise mean +- std"
    )
    train.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run saved in RUN_DIR")
    _add_trust_code(train, "the config.yaml of the --resume folder")
    train.set_defaults(handler=_train)


def _add_corpus_commands(commands: argparse._SubParsersAction) -> None:
    corpus = commands.add_parser(
        "corpus",
        help="the built-in speech deepfake corpus (offline: Debian recordings vs offline TTS)",
        description="Build the built-in corpus: real recorded speech from Debian packages against offline "
        "synthesisers and vocoders, with attacks in eval that training never sees.",
    )
    actions = corpus.add_subparsers(dest="action", title="actions", metavar="ACTION", required=True)
    build = actions.add_parser(
        "build",
        help="build (or finish) the corpus in a folder",
        description="Build the corpus into OUT: protocols/{train,dev,eval}.txt (ASVspoof 2019 format), "
        "flac/, plan.json and, last, corpus.json. Deterministic for a seed; an interrupted "
        "build is finished by running the same command again.",
    )
    build.add_argument("--out", type=Path, required=True, help="folder to build into")
    build.add_argument(
        "--size",
        choices=("tiny", "small", "default"),
        default="default",
        help="tiny: 46 utterances (tests), small: 460, default: 1,450",
    )
    build.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    build.add_argument("--workers", type=int, default=None, help="parallel renderers (default: all cores)")
    build.add_argument("--no-install", action="store_true", help="never run apt-get; only say what is missing")
    build.add_argument("--quiet", action="store_true", help="no progress bars or summary")
    build.set_defaults(handler=_corpus_build)
    install = actions.add_parser("install", help="install the Debian packages the corpus needs (as root)")
    install.set_defaults(handler=_corpus_install)


def _corpus_build(args: argparse.Namespace) -> int:
    from dpda.corpus import build_corpus

    build_corpus(
        args.out,
        size=args.size,
        seed=args.seed,
        workers=_workers(args.workers),
        install=not args.no_install,
        progress=not args.quiet,
    )
    return 0


def _train(args: argparse.Namespace) -> int:
    from dpda.config import load_config
    from dpda.train import TrainingError, train, train_seeds
    from dpda.train.build import shutdown_distributed

    if args.resume:
        if args.config or args.overrides or args.seeds:
            raise TrainingError("--resume takes only the run folder: its saved config is used")
        train(None, args.resume, resume=True, trust_code=args.trust_code)
    elif args.config is None:
        raise TrainingError("give a config file (or --resume RUN_DIR); configs/default.yaml lists every key")
    else:
        try:
            config = load_config(args.config, args.overrides)
        except OSError as error:  # the config file named on the command line
            raise _unusable(error) from error
        if args.seeds:
            train_seeds(config, args.seeds)
        else:
            train(config)
    shutdown_distributed()
    return 0


def _corpus_install(_: argparse.Namespace) -> int:
    from dpda.corpus import ensure_packages

    ensure_packages(install=True)
    print("the built-in corpus has every package it needs")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command in ``argv``. A ``DpdaError`` is the user's to fix: its message is printed
    as one line and the command exits with status 2. Any other exception is a bug in dpda and
    keeps its traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.handler(args)
    except DpdaError as error:
        _print_error(args, error)
        return 2


def _print_error(args: argparse.Namespace, error: Exception) -> None:
    command = " ".join(["dpda", args.command, *([args.action] if args.command == "corpus" else [])])
    print(f"{command}: {error}", file=sys.stderr)


def _unusable(error: OSError) -> DpdaError:
    """An ``OSError`` on a path named on the command line (missing, a folder, not readable or
    writable): the user's to fix, so a one-line error naming the path."""
    if error.filename is None:  # raised by dpda with its own message, e.g. "DST exists; ..."
        return DpdaError(str(error))
    return DpdaError(f"{error.filename}: {error.strerror}")


def _positive_seconds(text: str) -> float:
    """A command-line duration: a finite number of seconds above zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds (a number), got {text!r}") from None
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a positive finite number of seconds, got {text!r}")
    return value


def _workers(count: int | None) -> int | None:
    """``--workers`` checked here, where the error can name the flag (a pool says max_workers)."""
    if count is not None and count < 1:
        raise DpdaError(f"--workers must be at least 1, got {count}")
    return count


def _validate(args: argparse.Namespace) -> int:
    from dpda.data import AudioValidationError, read_protocol, validate

    options = dict(_parse_option(text) for text in args.option)
    workers = _workers(args.workers)
    try:
        records = read_protocol(args.kind, args.protocol, **options)
    except DpdaError:
        raise
    except OSError as error:
        raise _unusable(error) from error
    except (TypeError, ValueError) as error:  # read_protocol's errors for an --option: unknown, or a bad value
        raise DpdaError(str(error)) from error
    root = args.root or (args.protocol if args.protocol.is_dir() else args.protocol.parent)
    labels = Counter(r.label for r in records)
    attacks = sorted({r.attack for r in records if r.attack})
    print(
        f"{args.protocol}: {len(records)} trials, {labels[1]} bona fide, {labels[0]} spoof, "
        f"{len(attacks)} attack(s){': ' + ' '.join(attacks) if attacks else ''}"
    )
    try:
        report = validate(records, root, decode=not args.header_only, workers=workers)
    except AudioValidationError as error:  # every failed file, one a line: the command's result, exit 1
        _print_error(args, error)
        return 1
    print(
        f"all {len(records)} files decode: {report.total_seconds / 3600:.2f} h of audio, "
        f"{len(report.silent)} all-silent"
    )
    return 0


def _convert_fairseq(args: argparse.Namespace) -> int:
    from dpda.models.fairseq_convert import convert_fairseq_checkpoint

    try:
        conversion = convert_fairseq_checkpoint(args.source, args.destination)
    except OSError as error:  # SOURCE missing, DESTINATION exists or cannot be written
        raise _unusable(error) from error
    print(conversion.summary())
    return 0


def _convert_paper(args: argparse.Namespace) -> int:
    from dpda.train.released import convert_paper_checkpoint

    try:
        path = convert_paper_checkpoint(args.source, args.destination, args.model)
    except OSError as error:  # SOURCE missing, DESTINATION exists or cannot be written
        raise _unusable(error) from error
    print(f"wrote {path}")
    return 0


def _parse_option(text: str) -> tuple[str, object]:
    key, separator, value = text.partition("=")
    if not separator or not key:
        raise DpdaError(f"--option expects KEY=VALUE, got {text!r}")
    if key.endswith("_values"):
        return key, tuple(v for v in value.split(",") if v)
    return key, {"true": True, "false": False}.get(value.lower(), value)


def _list_aligners(_: argparse.Namespace) -> int:
    from dpda.align import SUMMARIES

    for name, summary in SUMMARIES.items():
        print(f"{name:12s} {summary}")
    print("\nEvery aligner takes grouping='model' (one Gram matrix) or 'layer' (one per module).")
    return 0
