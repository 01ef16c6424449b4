"""``fedge`` command line: profile, broker, enroll, agent, coordinator, plan, trial, backbone, export, evaluate, demo."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler

from fedge.quantization.backbone import DEFAULT_BACKBONE, QUANTIZATIONS

FILE_WIDTH = 240  # output going to a file or pipe is never wrapped or cut at 80 columns
console = Console(width=None if sys.stdout.isatty() else FILE_WIDTH)
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _setup_logging(verbose: bool, log_file: str | None = None) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    if log_file is not None:
        handler: logging.Handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
    elif sys.stderr.isatty():
        handler = RichHandler(console=Console(stderr=True), show_path=False)
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], format="%(message)s")
    for noisy in ("amqtt", "transitions", "httpx", "urllib3", "transformers", "peft", "onnxruntime"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _set_threads(threads: int) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def cmd_profile(args) -> int:
    from fedge.profiles import load_catalogue_profile, probe

    profile = load_catalogue_profile(args.device) if args.device else probe()
    if args.json:
        print(json.dumps(asdict(profile), indent=2))
        return 0
    from rich.table import Table

    table = Table(title=f"Device profile: {profile.name} ({profile.source})", show_header=False)
    for key, value in asdict(profile).items():
        if key.endswith("_bytes") and value is not None:
            value = f"{value / 1024**3:.2f} GiB"
        table.add_row(key, "—" if value is None else str(value))
    console.print(table)
    return 0


def cmd_broker(args) -> int:
    from fedge.broker import EmbeddedBroker
    from fedge.trust.enrolment import Enrolment

    enrolment = Enrolment.load(args.fleet) if args.fleet else None
    with EmbeddedBroker(args.host, args.port, enrolment) as broker:
        access = f"{len(enrolment.active())} enrolled devices and the coordinator log in, each held to its topics" if enrolment else "[yellow]open to anonymous clients[/] (pass --fleet DIR to admit only an enrolled fleet)"
        console.print(f"embedded MQTT broker on [bold]{broker.url}[/]: {access} — Ctrl-C to stop")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


def cmd_agent(args) -> int:
    from fedge.task.data import read_rows

    data = read_rows(args.data)  # checked before the heavy imports: a bad file fails in well under a second
    eval_data = read_rows(args.eval_data) if args.eval_data else None
    broker = _broker_config(args)
    credentials = _agent_credentials(args)

    import torch

    from fedge.edge_agent.agent import EdgeAgent
    from fedge.profiles import probe, simulated_profile
    from fedge.profiles.probe import bitsandbytes_usable

    _set_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    agent_id = credentials.identity if credentials else args.id
    profile = simulated_profile(args.device_profile, device.startswith("cuda"), bitsandbytes_usable()) if args.device_profile else probe(agent_id)
    agent = EdgeAgent(agent_id, broker, data, profile, data_source=args.data, eval_source=args.eval_data, device=device, heartbeat_s=args.heartbeat, save_dir=Path(args.save) if args.save else None, eval_data=eval_data, cache_dir=Path(args.cache) if args.cache else None, credentials=credentials, share_label_counts=not args.no_label_counts, slowdown=args.slowdown)
    agent.run()
    if agent.refused:
        console.print(f"[red]this device cannot take part: {agent.refused}[/]")
        return 2
    return 0


def _agent_credentials(args):
    """The device's credentials (``--credentials``), or None for an explicitly ``--insecure`` agent."""
    from fedge.trust.enrolment import Credentials

    if args.credentials:
        credentials = Credentials.load(args.credentials)
        if args.id and args.id != credentials.identity:
            raise ValueError(f"--id {args.id} does not match the credentials of {credentials.identity}")
        return credentials
    if not args.insecure:
        raise ValueError("give this device's --credentials (from `fedge enroll`), or --insecure to run unsigned on a network you trust")
    if not args.id:
        raise ValueError("--id is required without --credentials")
    return None


def _bridge(args):
    """The site broker's bridge to the central one, from --bridge-to and the site's credentials in the central fleet."""
    if not args.bridge_to:
        return None
    if not args.bridge_credentials:
        raise ValueError("--bridge-to needs --bridge-credentials: the site's credentials file from the central fleet")
    from fedge.transport import BrokerConfig
    from fedge.trust.broker_files import Bridge
    from fedge.trust.enrolment import Credentials

    central, site = BrokerConfig.from_url(args.bridge_to), Credentials.load(args.bridge_credentials)
    return Bridge(site.identity, central.host, central.port, site.broker_username, site.broker_password, central.tls, args.bridge_ca)


def cmd_enroll(args) -> int:
    from fedge.trust.broker_files import write_mosquitto_files
    from fedge.trust.enrolment import Enrolment, enroll, revoke

    fleet = Path(args.fleet)
    for identity in args.revoke or ():
        revoke(fleet, identity)
        console.print(f"revoked {identity}: the coordinator refuses it from its next round; rewrite the broker files (--mosquitto) and reload the broker")
    if args.devices:
        for identity, path in zip(args.devices, enroll(fleet, args.devices)):
            console.print(f"enrolled {identity}: credentials in {path} (copy to the device, then delete here)")
    enrolment = Enrolment.load(fleet)
    if args.mosquitto:
        for path in write_mosquitto_files(enrolment, Path(args.mosquitto), port=args.port, tls_host=args.tls_host, bridge=_bridge(args)):
            console.print(f"wrote {path}")
    console.print(f"{len(enrolment.active())} devices enrolled in {fleet} ({len(enrolment.devices) - len(enrolment.active())} revoked)")
    return 0


def _broker_config(args):
    from fedge.transport import BrokerConfig

    return BrokerConfig.from_url(
        args.broker,
        ca_certs=args.ca_certs,
        certfile=args.certfile,
        keyfile=args.keyfile,
        **({"username": args.username, "password": os.environ.get("FEDGE_MQTT_PASSWORD")} if args.username else {}),
    )


def cmd_coordinator(args) -> int:
    from fedge.coordinator.config import CoordinatorConfig
    from fedge.task.data import read_rows
    from fedge.task.kinds import kind_of

    config = CoordinatorConfig.from_yaml(args.config)  # config and data are checked before the heavy imports
    kind_of(config.task.kind).items(read_rows(config.eval_data), config.task, config.eval_data)

    if args.role == "site":
        if args.resume:
            raise ValueError("--role site cannot --resume: restart the site; the central coordinator resends its work")
        from fedge.coordinator.site import SiteAggregator

        summary = SiteAggregator(config).run()
    else:
        from fedge.coordinator.server import Coordinator

        summary = Coordinator(config, resume=args.resume).run()
    final = summary.rounds[-1]
    console.print(f"final {final.get('metric', 'accuracy')} {final['accuracy']:.3f} after round {final['round']}; run directory {summary.run_dir}")
    return 0


def cmd_plan(args) -> int:
    from fedge.coordinator.fleet import load_fleet
    from fedge.coordinator.plan_report import groups_table, plan_table, plan_to_dict, write_plan
    from fedge.coordinator.planner import plan_fleet
    from fedge.profiles.model_shape import load_model_shape

    fleet = load_fleet(args.fleet)
    model = args.model or fleet.model
    if model is None:
        raise ValueError("name the model: --model PATH_OR_NAME, or 'model:' in the fleet file")
    plan = plan_to_dict(plan_fleet(fleet.members, load_model_shape(model), fleet.options))
    console.print(plan_table(plan, per_device=args.devices))
    if plan["groups"]:
        console.print(groups_table(plan))
    if args.out:
        write_plan(plan, args.out)
        console.print(f"plan written to {args.out}")
    return 0


def cmd_backbone(args) -> int:
    from fedge.quantization.backbone import locate_backbone
    from fedge.quantization.package import chunk_bytes_for, export_package, package_backbone

    package = package_backbone(locate_backbone(args.backbone), args.quantization, chunk_bytes_for(args.max_frame_kb))
    target = export_package(package, Path(args.out))
    console.print(f"{args.backbone} as {args.quantization}: {package.manifest.total_bytes / 1e6:.1f} MB in {target}")
    console.print(f"serve {args.out} over HTTP(S) and set backbone_url in the coordinator config; digest {package.digest}")
    return 0


def cmd_trial(args) -> int:
    from fedge.coordinator.config import ConfigError
    from fedge.shell.trial.config import TrialConfig
    from fedge.shell.trial.runner import run_trial

    try:
        trial = TrialConfig.from_yaml(args.trial)
    except (ConfigError, OSError) as error:
        console.print(f"[red]{error}[/]")
        return 2
    run_trial(trial, Path(args.out or f"runs/trial-{trial.name}"), console)
    return 0


def cmd_export(args) -> int:
    from fedge.deploy.onnx import export_run

    files = export_run(Path(args.run_dir), Path(args.onnx), int8=args.int8, adapter=Path(args.adapter) if args.adapter else None)
    for file in files:
        console.print(f"{file}: {file.stat().st_size / 1e6:.1f} MB")
    console.print(f"tokenizer and task written beside them; evaluate with: fedge evaluate {args.onnx} --data HELD_OUT.jsonl")
    return 0


def cmd_evaluate(args) -> int:
    from fedge.task.data import read_rows

    records = read_rows(args.data)  # checked before the heavy imports
    from fedge.deploy.evaluate import evaluate_model
    from fedge.deploy.onnx import INT8_FILE, MODEL_FILE, TASK_FILE, OnnxCausalLM, TorchCausalLM, export_task, merged_model, run_task

    _set_threads(args.threads)
    path = Path(args.path)
    if (path / TASK_FILE).exists():
        from transformers import AutoTokenizer

        engine, tokenizer, task = OnnxCausalLM(path / (INT8_FILE if args.int8 else MODEL_FILE), args.threads), AutoTokenizer.from_pretrained(path), export_task(path)
    elif (path / "config.json").exists():
        model, tokenizer = merged_model(path, Path(args.adapter) if args.adapter else None)
        engine, task = TorchCausalLM(model), run_task(path)[1]
    else:
        raise FileNotFoundError(f"{path}: neither an export ({TASK_FILE}) nor a run directory (config.json)")
    started = time.perf_counter()
    result = evaluate_model(engine, tokenizer, task, records, args.data, batch_size=args.batch_size)
    per_example_ms = (time.perf_counter() - started) / len(records) * 1000
    figures = {result.metric: result.accuracy, "loss": result.loss, "examples": len(records), "ms_per_example": per_example_ms}
    figures |= {"macro_f1": result.macro_f1} if result.per_class_f1 else {"perplexity": result.perplexity}
    print(json.dumps(figures) if args.json else "  ".join(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}" for key, value in figures.items()))
    return 0


def cmd_demo(args) -> int:
    from fedge.shell.demo import DemoSettings, run_demo

    settings = DemoSettings(
        run_dir=Path(args.run_dir), rounds=args.rounds, local_steps=args.local_steps, agents=args.agents,
        train_per_label=args.train_per_label, test_per_label=args.test_per_label, alpha=args.alpha, seed=args.seed,
    )
    return run_demo(settings, console)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedge", description="Federated LoRA fine-tuning for heterogeneous edge devices.")
    parser.add_argument("--version", action="version", version=f"fedge {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--log-file", help="write logs here instead of the terminal")
    sub = parser.add_subparsers(dest="command", required=True)

    profile = sub.add_parser("profile", help="measure this device (or show a catalogue entry)")
    profile.add_argument("--json", action="store_true", help="machine-readable output")
    profile.add_argument("--device", help="a catalogue entry instead of the live probe")
    profile.set_defaults(func=cmd_profile)

    broker = sub.add_parser("broker", help="run the embedded MQTT broker")
    broker.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    broker.add_argument("--port", type=int, default=1883, help="port to listen on (default 1883)")
    broker.add_argument("--fleet", help="the enrolment directory: only its devices and coordinator may log in, each to its own topics")
    broker.set_defaults(func=cmd_broker)

    agent = sub.add_parser("agent", help="run an edge agent")
    agent.add_argument("--broker", required=True, help="mqtt://[user@]host:port or mqtts://…; password from FEDGE_MQTT_PASSWORD")
    agent.add_argument("--data", required=True, help="JSON lines in the task's format: {text, label}, {instruction, input?, response} or {messages}")
    agent.add_argument("--credentials", help="this device's credentials file from `fedge enroll` (its id, signing key and broker login)")
    agent.add_argument("--id", help="this device's id: 1-64 letters, digits, '.', '_' or '-' (default: the credentials' id)")
    agent.add_argument("--insecure", action="store_true", help="run without credentials: unsigned, for a coordinator with insecure: true")
    agent.add_argument("--device-profile", help="simulate this catalogue device (its memory limit, speed and links) on this machine's backend")
    agent.add_argument("--device", help="torch device (default: cuda if available)")
    agent.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    agent.add_argument("--save", help="save the final adapter here")
    agent.add_argument("--eval-data", help="held-out JSON lines in the same format: report the task's score after every round")
    agent.add_argument("--heartbeat", type=float, default=10.0, help="seconds between heartbeats (sent from their own thread, whatever the agent is doing)")
    agent.add_argument("--cache", help="where backbone packages are kept, by digest (default $FEDGE_CACHE/received)")
    agent.add_argument("--slowdown", type=float, default=1.0, help="make every training step take this many times as long: emulate a slower device (field trials)")
    agent.add_argument("--no-label-counts", action="store_true", help="never tell the coordinator how many examples of each label this device holds, even when its strategy asks")
    agent.add_argument("--username", help="broker user name (password from FEDGE_MQTT_PASSWORD) instead of the credentials' login")
    agent.add_argument("--ca-certs", help="CA bundle that signed the broker's certificate (mqtts://)")
    agent.add_argument("--certfile", help="client certificate for mutual TLS")
    agent.add_argument("--keyfile", help="private key of the client certificate")
    agent.set_defaults(func=cmd_agent)

    enroll = sub.add_parser("enroll", help="give devices identities and credentials, revoke them, write broker password and ACL files")
    enroll.add_argument("devices", nargs="*", help="device ids to enrol (each gets FLEET/devices/ID.credentials.json)")
    enroll.add_argument("--fleet", required=True, help="the fleet's enrolment directory (created on first use; keep it off run directories)")
    enroll.add_argument("--revoke", action="append", metavar="ID", help="revoke a device (repeatable)")
    enroll.add_argument("--mosquitto", metavar="DIR", help="write Mosquitto's passwords, acl and mosquitto.conf for the enrolled devices here")
    enroll.add_argument("--port", type=int, default=8883, help="the listener port in the written mosquitto.conf")
    enroll.add_argument("--bridge-to", metavar="URL", help="with --mosquitto: this is a site's broker; bridge the site aggregator's topics (only those) to the central broker at URL")
    enroll.add_argument("--bridge-credentials", metavar="FILE", help="with --bridge-to: the site's credentials in the central fleet (`fedge enroll --fleet CENTRAL SITE_ID`)")
    enroll.add_argument("--bridge-ca", metavar="FILE", help="with --bridge-to mqtts://…: the CA that signed the central broker's certificate")
    enroll.add_argument("--tls-host", help="with --mosquitto: a TLS listener for this host name or address (CA and server certificate generated)")
    enroll.set_defaults(func=cmd_enroll)

    coordinator = sub.add_parser("coordinator", help="run the coordinator")
    coordinator.add_argument("--config", required=True, help="coordinator YAML (see examples/coordinator.yaml)")
    coordinator.add_argument("--resume", action="store_true", help="continue a run from its last completed round")
    coordinator.add_argument("--role", choices=("root", "site"), default="root", help="site: aggregate a site's devices on its own broker and forward one update per round to the central coordinator (config: upstream)")
    coordinator.set_defaults(func=cmd_coordinator)

    plan = sub.add_parser("plan", help="plan bits, ranks, depth, batch and steps for a fleet")
    plan.add_argument("fleet", help="fleet YAML: devices (catalogue names or profile JSON) and planner options")
    plan.add_argument("--model", help="checkpoint directory, config.json, or a bundled architecture (e.g. llama-2-7b)")
    plan.add_argument("--out", help="also write the plan as JSON here")
    plan.add_argument("--devices", action="store_true", help="one row per device (default: one row per kind of device, devices planned alike)")
    plan.set_defaults(func=cmd_plan)

    trial = sub.add_parser("trial", help="compare aggregation strategies on one simulated fleet; writes a report with plots")
    trial.add_argument("trial", help="trial YAML (see examples/trial.yaml)")
    trial.add_argument("--out", help="output directory (default runs/trial-NAME)")
    trial.set_defaults(func=cmd_trial)
    backbone = sub.add_parser("backbone", help="export a backbone package to serve from a URL (backbone_url)")
    backbone.add_argument("--backbone", default=DEFAULT_BACKBONE, help="backbone name or checkpoint directory")
    backbone.add_argument("--quantization", default="nf4", choices=QUANTIZATIONS, help="the form devices are assigned")
    backbone.add_argument("--max-frame-kb", type=int, default=512, help="the coordinator's max_frame_kb (sets the chunk size)")
    backbone.add_argument("--out", required=True, help="directory to write OUT/<digest>/ into")
    backbone.set_defaults(func=cmd_backbone)

    export = sub.add_parser("export", help="merge a run's model into its backbone and write it as ONNX for onnxruntime")
    export.add_argument("run_dir", help="the coordinator's run directory (RUN/coordinator in a demo or trial)")
    export.add_argument("--onnx", required=True, help="directory for model.onnx, the tokenizer and the task")
    export.add_argument("--int8", action="store_true", help="also write model.int8.onnx: int8 weights and int8 compute")
    export.add_argument("--adapter", help="one device's adapter (what `fedge agent --save DIR` wrote) instead of the global model; required for ce-lora")
    export.set_defaults(func=cmd_export)

    evaluate = sub.add_parser("evaluate", help="the task's held-out evaluation of an ONNX export (onnxruntime) or a run (torch)")
    evaluate.add_argument("path", help="an export directory (onnxruntime) or a run directory (torch, merged)")
    evaluate.add_argument("--data", required=True, help="held-out JSON lines in the task's format")
    evaluate.add_argument("--int8", action="store_true", help="evaluate the export's int8 model")
    evaluate.add_argument("--adapter", help="with a run directory: one device's adapter instead of the global model")
    evaluate.add_argument("--batch-size", type=int, default=16, help="rows per forward pass")
    evaluate.add_argument("--threads", type=int, default=0, help="CPU threads (0: the runtime's default)")
    evaluate.add_argument("--json", action="store_true", help="machine-readable output")
    evaluate.set_defaults(func=cmd_evaluate)

    demo = sub.add_parser("demo", help="a heterogeneous fleet fine-tunes SmolLM2-135M on an embedded broker")
    demo.add_argument("--run-dir", default="runs/demo", help="where the run's data, logs and results go")
    demo.add_argument("--rounds", type=int, default=6, help="federated rounds")
    demo.add_argument("--local-steps", type=int, default=10, help="the planner's starting local steps per round")
    demo.add_argument("--agents", type=int, default=4, help="agents, cycling through four catalogue devices")
    demo.add_argument("--train-per-label", type=int, default=80, help="training definitions per label, split across agents")
    demo.add_argument("--test-per-label", type=int, default=40, help="held-out definitions per label")
    demo.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration of the label skew")
    demo.add_argument("--seed", type=int, default=0, help="seed of the split, the planner's ties and training")
    demo.set_defaults(func=cmd_demo)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fedge")
    except PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")  # bitsandbytes, on every INT8 step
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose, args.log_file)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except (ValueError, RuntimeError, FileNotFoundError, KeyError) as error:
        logging.getLogger("fedge").error("%s", error)
        return 1


if __name__ == "__main__":
    sys.exit(main())
