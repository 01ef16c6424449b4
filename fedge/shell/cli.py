"""``fedge`` command line: profile, broker, enroll, agent, coordinator, plan, trial, backbone, export, evaluate, demo."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Callable
from functools import partial

from rich.console import Console
from rich.logging import RichHandler

from fedge.edge_agent.options import AgentOptions
from fedge.quantization.backbone import DEFAULT_BACKBONE, QUANTIZATIONS
from fedge.shell import commands
from fedge.shell.schema_options import add_options

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedge", description="Federated LoRA fine-tuning for heterogeneous edge devices.")
    parser.add_argument("--version", action="version", version=f"fedge {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--log-file", help="write logs here instead of the terminal")
    sub = parser.add_subparsers(dest="command", required=True)

    profile = sub.add_parser("profile", help="measure this device (or show a catalogue entry)")
    profile.add_argument("--json", action="store_true", help="machine-readable output")
    profile.add_argument("--device", help="a catalogue entry instead of the live probe")
    profile.set_defaults(func=commands.cmd_profile)

    data = sub.add_parser("data", help="write example data: one training file per device and a held-out file, from a built-in source")
    data.add_argument("source", choices=("wordnet", "fortunes", "chatterbot"), help="wordnet and fortunes: topic classification; chatterbot: instruction tuning")
    data.add_argument("devices", nargs="+", help="device ids: each gets OUT/ID.jsonl, its own skewed share of the examples")
    data.add_argument("--out", default="data", help="directory (default data); also writes OUT/test.jsonl, the held-out examples")
    data.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration of each device's label mix; smaller is more skewed (classification)")
    data.add_argument("--seed", type=int, default=0, help="seed of the split")
    data.set_defaults(func=commands.cmd_data)

    broker = sub.add_parser("broker", help="run the embedded MQTT broker")
    broker.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    broker.add_argument("--port", type=int, default=1883, help="port to listen on (default 1883)")
    broker.add_argument("--fleet", help="the enrolment directory: only its devices and coordinator may log in, each to its own topics")
    broker.set_defaults(func=commands.cmd_broker)

    agent = sub.add_parser("agent", help="run an edge agent")
    add_options(agent, AgentOptions)
    agent.set_defaults(func=commands.cmd_agent)

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
    enroll.set_defaults(func=commands.cmd_enroll)

    coordinator = sub.add_parser("coordinator", help="run the coordinator")
    coordinator.add_argument("--config", required=True, help="coordinator YAML (see examples/coordinator.yaml)")
    coordinator.add_argument("--resume", action="store_true", help="continue a run from its last completed round")
    coordinator.add_argument("--role", choices=("root", "site"), default="root", help="site: aggregate a site's devices on its own broker and forward one update per round to the central coordinator (config: upstream)")
    coordinator.add_argument("--arms", help="a field trial: run these arms (strategies, optimisers, round modes; see fedge.shell.trial.field) one after another over the connected agents and write a trial report")
    coordinator.add_argument("--wait-broker", type=float, default=0.0, metavar="SECONDS", help="where nothing answers at the broker's address yet, try again each second for this many seconds (default 0: fail at once)")
    coordinator.add_argument("--out", help="with --arms: the report's directory (default runs/field-NAME)")
    coordinator.set_defaults(func=commands.cmd_coordinator)

    plan = sub.add_parser("plan", help="plan bits, ranks, depth, batch and steps for a fleet")
    plan.add_argument("fleet", help="fleet YAML: devices (catalogue names or profile JSON) and planner options")
    plan.add_argument("--model", help="checkpoint directory, config.json, or a bundled architecture (e.g. llama-2-7b)")
    plan.add_argument("--out", help="also write the plan as JSON here")
    plan.add_argument("--devices", action="store_true", help="one row per device (default: one row per kind of device, devices planned alike)")
    plan.set_defaults(func=commands.cmd_plan)

    trial = sub.add_parser("trial", help="compare aggregation strategies on one simulated fleet; writes a report with plots")
    trial.add_argument("trial", help="trial YAML (see examples/trial.yaml)")
    trial.add_argument("--out", help="output directory (default runs/trial-NAME)")
    trial.set_defaults(func=commands.cmd_trial)
    backbone = sub.add_parser("backbone", help="export a backbone package to serve from a URL (backbone_url)")
    backbone.add_argument("--backbone", default=DEFAULT_BACKBONE, help="backbone name or checkpoint directory")
    backbone.add_argument("--quantization", default="nf4", choices=QUANTIZATIONS, help="the form devices are assigned")
    backbone.add_argument("--max-frame-kb", type=int, default=512, help="the coordinator's max_frame_kb (sets the chunk size)")
    backbone.add_argument("--out", required=True, help="directory to write OUT/<digest>/ into")
    backbone.set_defaults(func=commands.cmd_backbone)

    status = sub.add_parser("status", help="a running coordinator's fleet in the terminal: each device's state, plan, progress and last contact")
    status.add_argument("run_dir", help="the coordinator's run directory (run_dir in its config)")
    status.add_argument("--watch", type=float, default=0.0, metavar="SECONDS", help="show it again every SECONDS until Ctrl-C")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=commands.cmd_status)

    schema = sub.add_parser("schema", help="print a config file's JSON Schema, or rewrite the schemas and the configuration reference")
    schema.add_argument("kind", nargs="?", choices=("coordinator", "trial", "arms", "fleet", "agent"), help="which file's schema to print")
    schema.add_argument("--write", metavar="ROOT", help="write ROOT/schemas/*.schema.json and the configuration and command-line references under ROOT/docs/reference")
    schema.set_defaults(func=partial(commands.cmd_schema, parser=parser))

    export = sub.add_parser("export", help="merge a run's model into its backbone and write it as ONNX for onnxruntime")
    export.add_argument("run_dir", help="the coordinator's run directory (RUN/coordinator in a demo or trial)")
    export.add_argument("--onnx", required=True, help="directory for model.onnx, the tokenizer and the task")
    export.add_argument("--int8", action="store_true", help="also write model.int8.onnx: int8 weights and int8 compute")
    export.add_argument("--adapter", help="one device's adapter (what `fedge agent --save DIR` wrote) instead of the global model; required for ce-lora")
    export.set_defaults(func=commands.cmd_export)

    evaluate = sub.add_parser("evaluate", help="the task's held-out evaluation of an ONNX export (onnxruntime) or a run (torch)")
    evaluate.add_argument("path", help="an export directory (onnxruntime) or a run directory (torch, merged)")
    evaluate.add_argument("--data", required=True, help="held-out JSON lines in the task's format")
    evaluate.add_argument("--int8", action="store_true", help="evaluate the export's int8 model")
    evaluate.add_argument("--adapter", help="with a run directory: one device's adapter instead of the global model")
    evaluate.add_argument("--batch-size", type=int, default=16, help="rows per forward pass")
    evaluate.add_argument("--threads", type=int, default=0, help="CPU threads (0: the runtime's default)")
    evaluate.add_argument("--json", action="store_true", help="machine-readable output")
    evaluate.set_defaults(func=commands.cmd_evaluate)

    demo = sub.add_parser("demo", help="a heterogeneous fleet fine-tunes SmolLM2-135M on an embedded broker")
    demo.add_argument("--run-dir", default="runs/demo", help="where the run's data, logs and results go")
    demo.add_argument("--rounds", type=int, default=6, help="federated rounds")
    demo.add_argument("--local-steps", type=int, default=10, help="the planner's starting local steps per round")
    demo.add_argument("--agents", type=int, default=4, help="agents, cycling through four catalogue devices")
    demo.add_argument("--train-per-label", type=int, default=80, help="training definitions per label, split across agents")
    demo.add_argument("--test-per-label", type=int, default=40, help="held-out definitions per label")
    demo.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration of the label skew")
    demo.add_argument("--seed", type=int, default=0, help="seed of the split, the planner's ties and training")
    demo.set_defaults(func=commands.cmd_demo)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fedge")
    except PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: list[str] | None = None, agent_type: Callable | None = None) -> int:
    """``agent_type``: what ``fedge agent`` runs instead of ``EdgeAgent`` (a trial's insider)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")  # bitsandbytes, on every INT8 step
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose, args.log_file)
    if agent_type is not None and args.func is commands.cmd_agent:
        args.func = partial(commands.cmd_agent, agent_type=agent_type)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except (ValueError, RuntimeError, FileNotFoundError, KeyError) as error:
        logging.getLogger("fedge").error("%s", error)
        return 1


if __name__ == "__main__":
    sys.exit(main())
