"""``python -m devstack build|up|demo|referee|eval``: build the binaries, run the stack, run the narrated demo, run
the referee (the operator's verdicts against TiKV's and PD's own alerting rules), or evaluate tickets and diagnoses
against the fault catalogue."""

from __future__ import annotations

import argparse
import os
import sys

from devstack.builds import binaries
from devstack.host.processes import ComponentFailed


def main(argv: list[str] | None = None) -> int:
    """Run a command; a stack that cannot start, or is interrupted while starting, says so in one message (a failure
    carries the failing component's log tail), not in a traceback. Stacks stop themselves on the way out."""
    try:
        return _run(argv)
    except ComponentFailed as error:
        print(f"devstack: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("devstack: interrupted; what it had started is stopped", file=sys.stderr)
        return 130


def _run(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="devstack", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build", help="build the control plane, Prometheus, helm, the node and its images (cached); "
                        "the demo and the stack build only what they start, on first use")  # fmt: skip
    up = commands.add_parser("up", help="start the stack, an example MonitoredCluster and the operator; show them")
    up.add_argument("--hold", action="store_true", help="keep everything running until Ctrl-C")
    up.add_argument("--node", action="store_true", help="a real node (root): you install the operator with helm; "
                    "runs until Ctrl-C")  # fmt: skip
    commands.add_parser("demo", help="narrated demo: store outage, latency spike, disk fill → tickets → resolution")
    commands.add_parser("manifests", help="render deploy/operator-k8s.yaml from the Helm chart")
    commands.add_parser("referee", help="the operator's verdicts vs upstream alerting rules, fault by fault, in both "
                        "label worlds (options: python -m devstack referee --help)", add_help=False)  # fmt: skip
    commands.add_parser("eval", help="the fault catalogue on the real stack: tickets and diagnoses scored (options: "
                        "python -m devstack eval --help)", add_help=False)  # fmt: skip
    commands.add_parser("bench", help="scale, cost and latency benchmark (options: python -m devstack bench --help)",
                        add_help=False)  # fmt: skip
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        from devstack.jobs import bench  # noqa: PLC0415

        return bench.main(rest)
    if args.command == "eval":
        from devstack.jobs import eval as evaluation  # noqa: PLC0415

        return evaluation.main(rest)
    if args.command == "referee":
        from devstack.jobs import referee  # noqa: PLC0415

        return referee.main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "build":
        binaries.ensure_all()
        binaries.build_helm()
        from devstack.world.node import Node  # noqa: PLC0415

        if os.geteuid() == 0:
            Node.prepare()
        else:
            print(
                "[devstack] Not root: the node (containerd, kubelet, images) is not built; the install tier needs root"
            )
        return 0
    if args.command == "manifests":
        from devstack.jobs import manifests  # noqa: PLC0415

        print(f"Wrote {manifests.write()}")
        return 0
    from devstack.jobs import demo  # noqa: PLC0415 - the stack's imports are not needed to build

    if args.command == "up":
        return demo.up(hold=args.hold, node=args.node)
    return demo.run_demo()


if __name__ == "__main__":
    sys.exit(main())
