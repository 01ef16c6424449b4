"""What each ``fedge`` command does (``fedge.shell.cli`` parses the command line and calls one of these)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from rich.console import Console

from fedge.profiles.timing import UNKNOWN_LINK_MBPS


FILE_WIDTH = 240  # output going to a file or pipe is never wrapped or cut at 80 columns
console = Console(width=None if sys.stdout.isatty() else FILE_WIDTH)


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
        table.add_row(key, UNMEASURED.get(key, "unknown") if value is None else str(value))
    console.print(table)
    return 0


UNKNOWN_LINK = f"unknown (no peer to measure against; the planner takes {UNKNOWN_LINK_MBPS:g} Mbit/s)"
UNMEASURED = {  # what `fedge profile` shows for a field it has no value for
    "uplink_mbps": UNKNOWN_LINK, "downlink_mbps": UNKNOWN_LINK,
    "source_note": "none",
    "cuda_device_name": "none (no CUDA device)", "cuda_total_bytes": "none (no CUDA device)", "cuda_free_bytes": "none (no CUDA device)",
    "cuda_capability": "none (no CUDA device)", "jetson_model": "none (not a Jetson)", "fp16_gflops": "unknown (not measured on this device)",
}


def cmd_data(args) -> int:
    from fedge.shell.trial.data import TrialData, default_task, prepare_data

    if len(set(args.devices)) < len(args.devices):
        raise ValueError("each device id once")
    task = default_task(args.source)
    out = Path(args.out)
    split = prepare_data(TrialData(source=args.source, alpha=args.alpha), task, args.devices, args.seed, out)
    (out / "train_pooled.jsonl").unlink()  # the trials' centralised reference; nobody holds all the data here
    for device in args.devices:
        shares = split["agents"][device]
        rows = len((out / f"{device}.jsonl").read_text().splitlines())
        console.print(f"{out / (device + '.jsonl')}: {rows} examples" + (
            f" ({', '.join(f'{count} {label}' for label, count in zip(task.labels, shares) if count)})" if task.kind == "classify" else f" (topics {', '.join(shares)})"))
    console.print(f"{out / 'test.jsonl'}: {split['test_examples']} held-out examples, for the coordinator's eval_data; task: {task.kind}" + (f", labels {', '.join(task.labels)}" if task.labels else ""))
    return 0


def cmd_broker(args) -> int:
    from fedge.broker import EmbeddedBroker

    with EmbeddedBroker(args.host, args.port, args.fleet) as broker:
        enrolment = broker.enrolment
        access = f"{len(enrolment.active())} enrolled devices and the coordinator log in, each held to its topics (a revocation applies at once)" if enrolment else "[yellow]open to anonymous clients[/] (pass --fleet DIR to admit only an enrolled fleet)"
        console.print(f"embedded MQTT broker on [bold]{broker.url}[/]: {access} — Ctrl-C to stop")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


def cmd_agent(args, agent_type=None) -> int:
    from fedge.edge_agent.options import AgentOptions
    from fedge.shell.schema_options import options_from
    from fedge.task.data import read_rows

    args = options_from(args, AgentOptions)

    max_line = args.max_line_kb * 1024
    data = read_rows(args.data, max_line)  # checked before the heavy imports: a bad file fails in well under a second
    eval_data = read_rows(args.eval_data, max_line) if args.eval_data else None
    credentials = _agent_credentials(args)
    broker = _checked_broker(_broker_config(args), credentials, args.wait_broker)  # a missing broker or a refused login fails here, in well under a second

    import torch

    from fedge.edge_agent.agent import EdgeAgent
    from fedge.profiles import probe, simulated_profile
    from fedge.profiles.probe import bitsandbytes_usable

    _set_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    agent_id = credentials.identity if credentials else args.id
    profile = simulated_profile(args.device_profile, device.startswith("cuda"), bitsandbytes_usable()) if args.device_profile else probe(agent_id)
    agent = (agent_type or EdgeAgent)(agent_id, broker, data, profile, data_source=args.data, eval_source=args.eval_data, device=device, heartbeat_s=args.heartbeat, save_dir=Path(args.save) if args.save else None, eval_data=eval_data, cache_dir=Path(args.cache) if args.cache else None, credentials=credentials, share_label_counts=not args.no_label_counts, slowdown=args.slowdown, receipt_wait_s=args.receipt_wait)
    agent.run()
    if agent.refused:
        console.print(f"[red]this device cannot take part: {agent.refused}[/]")
        return 2
    return 0


def _with_checked_broker(config, wait_s: float = 0.0):
    """The coordinator config once its broker has answered its login, naming the protocol it spoke (so the run
    does not probe again)."""
    from fedge.transport import BrokerConfig
    from fedge.trust.enrolment import coordinator_credentials

    broker = BrokerConfig.from_url(config.broker, ca_certs=config.ca_certs)
    checked = _checked_broker(broker, coordinator_credentials(config.enrolment) if config.enrolment else None, wait_s)
    if "protocol=" in config.broker:
        return config
    return replace(config, broker=f"{config.broker}{'&' if '?' in config.broker else '?'}protocol={checked.protocol}")


def _checked_broker(broker, credentials, wait_s: float = 0.0):
    """The broker config with the login ``credentials`` give (unless the URL names a user), checked by connecting
    once (``fedge.transport.check_broker``); where nothing answers, asked again each second for up to ``wait_s``."""
    from fedge.transport import BrokerAbsent, TransportError, check_broker

    if credentials is not None and broker.username is None:
        broker = replace(broker, username=credentials.broker_username, password=credentials.broker_password)
    deadline, told = time.monotonic() + wait_s, False
    while True:
        try:
            return check_broker(broker)
        except BrokerAbsent as error:
            if time.monotonic() >= deadline:
                raise RuntimeError(f"broker {broker.host}:{broker.port}: {error}" + (f" (waited {wait_s:g} s)" if wait_s else "")) from error
            if not told:
                console.print(f"waiting up to {wait_s:g} s for the broker at {broker.host}:{broker.port}")
                told = True
            time.sleep(1.0)
        except TransportError as error:
            raise RuntimeError(f"broker {broker.host}:{broker.port}: {error}") from error


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
        console.print(f"revoked {identity}: the coordinator refuses it from its next message; `fedge broker --fleet` cuts it off at once; for Mosquitto rewrite the files (--mosquitto) and reload it (SIGHUP)")
    if args.devices:
        for identity, path in zip(args.devices, enroll(fleet, args.devices)):
            console.print(f"enrolled {identity}: credentials in {path} (copy to the device, then delete here)")
        _warn_if_tracked(fleet)
    enrolment = Enrolment.load(fleet)
    if args.mosquitto:
        for path in write_mosquitto_files(enrolment, Path(args.mosquitto), port=args.port, tls_host=args.tls_host, bridge=_bridge(args)):
            console.print(f"wrote {path}")
        _warn_if_tracked(Path(args.mosquitto))
    console.print(f"{len(enrolment.active())} devices enrolled in {fleet} ({len(enrolment.devices) - len(enrolment.active())} revoked)")
    return 0


def _warn_if_tracked(directory: Path) -> None:
    """Secrets written inside a git work tree where git would not ignore them: say so before anyone commits them."""
    try:
        inside = subprocess.run(["git", "-C", str(directory), "rev-parse", "--is-inside-work-tree"], capture_output=True, text=True, timeout=10)
        if inside.returncode != 0 or inside.stdout.strip() != "true":
            return
        ignored = subprocess.run(["git", "-C", str(directory), "check-ignore", "-q", "."], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):  # no git here: nothing to warn about
        return
    if ignored.returncode != 0:
        console.print(f"[yellow]warning: {directory} holds signing keys and broker passwords inside a git work tree, and git does not ignore it: "
                      f"add it to .gitignore or keep the fleet outside the repository[/]")


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

    config = CoordinatorConfig.from_yaml(args.config)  # config, options, data and broker are checked before the heavy imports
    kind_of(config.task.kind).items(read_rows(config.eval_data), config.task, config.eval_data)
    if args.out and not args.arms:
        raise ValueError("--out goes with --arms (a field trial's report); a run's directory is run_dir in the config")
    if args.role == "site" and args.resume:
        raise ValueError("--role site cannot --resume: restart the site; the central coordinator resends its work")
    if args.role == "site" and not config.upstream:
        raise ValueError("--role site needs upstream: the site's credentials file in the central fleet")
    config = _with_checked_broker(config, args.wait_broker)

    if args.arms:
        return _field_trial(args, config)
    if args.role == "site":
        from fedge.coordinator.site import SiteAggregator

        summary = SiteAggregator(config).run()
    else:
        from fedge.coordinator.server import Coordinator

        summary = Coordinator(config, resume=args.resume).run()
    final = summary.rounds[-1]
    console.print(f"final {final.get('metric', 'accuracy')} {final['accuracy']:.3f} after round {final['round']}; run directory {summary.run_dir}")
    return 0


def _field_trial(args, config) -> int:
    from fedge.shell.trial.field import FieldTrial, run_field_trial

    if args.resume or args.role != "root":
        raise ValueError("--arms runs every arm from the start on the root coordinator: no --resume, no --role site")
    trial = FieldTrial.from_yaml(args.arms, config)
    run_field_trial(config, trial, Path(args.out or f"runs/field-{trial.name}"), console)
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


def cmd_status(args) -> int:
    from fedge.shell.status import show_status

    return show_status(Path(args.run_dir), console, args.watch, args.json)


def cmd_schema(args, parser) -> int:
    """``parser``: fedge's own, for the command-line reference."""
    from fedge.shell.schemas import json_schema, write_all

    if args.write:
        for path in write_all(Path(args.write), parser):
            console.print(f"wrote {path}")
        return 0
    if not args.kind:
        raise ValueError("name a kind of file (coordinator, trial, arms, fleet, agent), or --write ROOT")
    print(json.dumps(json_schema(args.kind), indent=2, ensure_ascii=False))
    return 0


def cmd_export(args) -> int:
    from fedge.deploy.run_files import exportable

    exportable(Path(args.run_dir), Path(args.adapter) if args.adapter else None)  # an unfinished run fails before the heavy imports
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
