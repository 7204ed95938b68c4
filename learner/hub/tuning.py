"""Live tuning: how the settings an operator may change on a running learner (`asyncrl ctl
set`; the list is `learner.tunables`) are checked and applied, who may change them, and the
audit.

A tunable is a field of the run's configuration; its type and bounds are that field's, so a
live value is checked exactly as the YAML is. The live value is the configuration object the
hub and the step loop already read (`cfg`), set here and nowhere else, under the hub's lock:
a change lands between two events of the hub (a lease is issued with the old or the new
sampling, never a mix), and the step loop reads its settings once per step
(`trainer_settings`), so it never changes mid-step. What the ledger owns (η, reuse, group
size) changes through the ledger's events, never by touching the gate or the buffer.

A `set` applies all its changes or none. Everything that is not in `TUNABLES` is refused with a
one-line reason; so is a request from anyone but an operator: under CURVE a key from
`asyncrl keys --operators`, without CURVE a peer on loopback (or anyone, with
`learner.ctl_allow_remote`). Every change is audited: a log line,
`asyncrl_config_changes_total{field}`, the tunable's gauge and the history, which checkpoints
keep so a resume keeps the live values.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time

from pydantic import ValidationError

from asyncrl.learner.hub.core import HubCore
from asyncrl.learner.hub.peers import Sender
from asyncrl.learner.rewards.combine import function_labels
from asyncrl.learner.tunables import TUNABLES
from asyncrl.protocol.messages import RELEASE, SCHEMA_VERSION, Hello, Refused
from asyncrl.protocol.operator import MAX_CHANGES, MAX_HISTORY_REPLY, TUNE_OPS, Tune, TuneReply

logger = logging.getLogger("asyncrl.learner.tuning")


MAX_HISTORY = 1000  # kept in memory and checkpoints; the oldest go first


class Tuning:
    """The live settings of one learner. `handle` runs on the hub's socket thread; the step
    loop calls `trainer_settings`; checkpoints use `state_dict`/`load_state_dict`."""

    def __init__(self, core: HubCore, operators: frozenset[str] = frozenset()):
        """`operators`: the public keys that may tune under CURVE."""
        self.core = core
        self.cfg = cfg = core.cfg
        self.curve = bool(cfg.security.curve_dir)
        self.operators = operators
        self.allow_remote = cfg.learner.ctl_allow_remote
        self.base = {name: self._get(name) for name in TUNABLES}  # as the run started
        self.history: list[dict] = []
        m = core.metrics
        self.changes, self.refused, self.gauges = m.config_changes, m.config_refused, m.tunables
        for name in TUNABLES:
            self._show(name)

    # ------------------------------------------------------------ socket thread
    def refuse_hello(self, msg: Hello, sender: Sender) -> Refused | None:
        """A `Refused` (counted, logged) when an operator's key says hello: it may tune the
        run, never take leases, push rollouts or fetch weights, all of which need a hello."""
        if not (sender.key and sender.key in self.operators):
            return None
        self.core.metrics.hellos_refused.labels(reason="operator_key").inc()
        self.core.log.warning(
            "operator_key", "hello as %r refused: an operator key", msg.generator_id[:64]
        )
        detail = "an operator key (asyncrl keys --operators) may tune the run, not generate"
        return Refused("operator_key", detail, SCHEMA_VERSION, RELEASE)

    def handle(self, msg: Tune, sender: Sender) -> TuneReply:
        core = self.core
        with core.lock:
            reply = TuneReply(msg.op, core.version)
            why = self._authorize(sender)
            if why is None and msg.op not in TUNE_OPS:
                why = ("op", f"unknown op {msg.op[:16]!r} (get, set, history)")
            if why is None and len(msg.changes) > MAX_CHANGES:
                why = ("syntax", f"at most {MAX_CHANGES} changes per request")
            if why is not None:
                self.refused.labels(reason=why[0]).inc()
                core.log.warning("tune-refused", "asyncrl ctl request refused: %s", why[1])
                reply.refused = [f"*: {why[1]}"]
                return reply
            if msg.op == "set":
                applied, refused = self.set(msg.changes, by=_who(sender))
                reply.applied = applied
                reply.refused = [f"{name}: {reason}" for name, reason in refused]
            if msg.op == "history":
                reply.history = [json.dumps(h) for h in self.history[-MAX_HISTORY_REPLY:]]
            reply.values = [f"{k}={json.dumps(v)}" for k, v in self.values().items()]
            return reply

    def _authorize(self, sender: Sender) -> tuple[str, str] | None:
        if self.curve:
            if sender.key and sender.key in self.operators:
                return None
            return ("unauthorized", "not an operator key (asyncrl keys --operators NAME)")
        if self.allow_remote or _loopback(sender.address):
            return None
        return ("unauthorized", "not from loopback (learner.ctl_allow_remote, or use CURVE)")

    # ------------------------------------------------------------ under the hub's lock
    def values(self) -> dict:
        return {name: self._get(name) for name in TUNABLES}

    def set(self, changes: list[str], by: str = "") -> tuple[list[str], list[tuple[str, str]]]:
        """Check every `field=value`, then apply all of them, or none if one is refused.
        Returns (applied fields, [(field, reason)])."""
        checked, refused = {}, []
        for text in changes:
            name, sep, raw = text.partition("=")
            name = name.strip()
            if not sep or not name:
                refused.append((text[:64], "syntax: expected field=value"))
                self.refused.labels(reason="syntax").inc()
                continue
            got = self._check(name[:64], raw)
            if isinstance(got, tuple):
                refused.append((name[:64], got[1]))
                self.refused.labels(reason=got[0]).inc()
            else:
                checked[name] = got
        if refused:
            return [], refused
        now, version = time.time(), self.core.version
        for name, value in checked.items():
            old = self._get(name)
            self._apply(name, value)
            entry = {"time": round(now, 3), "version": version, "field": name}
            entry.update(old=old, new=self._get(name), by=by)
            self.history = [*self.history, entry][-MAX_HISTORY:]
            self.changes.labels(field=name).inc()
            logger.info(
                "live change at version %d by %s: %s %s -> %s",
                version,
                by or "?",
                name,
                json.dumps(old),
                json.dumps(entry["new"]),
            )
        return list(checked), []

    def _check(self, name: str, raw: str):
        """The validated value, or (reason label, one-line reason)."""
        section_name, _, field = name.partition(".")
        section = getattr(self.cfg, section_name, None)
        fields = getattr(type(section), "model_fields", {})
        if field not in fields:
            return ("unknown", "no such config field")
        if name not in TUNABLES:
            return ("not_tunable", "read only at start: restart with --resume and an override")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw.strip()  # a bare string: sampling.stop needs a JSON list though
        try:
            candidate = {**section.model_dump(), field: value}
            new = getattr(type(section).model_validate(candidate), field)
        except ValidationError as exc:
            first = exc.errors()[0]
            return ("invalid", " ".join(str(first["msg"]).split())[:160])
        if TUNABLES[name].ceiling and new > self.base[name]:
            return ("ceiling", f"at most {self.base[name]}, the value this run started with")
        return new

    def _apply(self, name: str, value) -> None:
        section_name, _, field = name.partition(".")
        event = TUNABLES[name].event
        if event is not None:
            getattr(self.core.ledger, event)(value)
        setattr(getattr(self.cfg, section_name), field, value)
        self._show(name)

    def _get(self, name: str):
        section_name, _, field = name.partition(".")
        return getattr(self.cfg, section_name).model_dump(mode="json", include={field})[field]

    def _show(self, name: str) -> None:
        value, gauge = self._get(name), self.gauges[name]
        if name == "reward.weights":
            specs = self.cfg.reward.resolved()
            for label, (_, w) in zip(function_labels([s for s, _ in specs]), specs):
                gauge.labels(function=label).set(w)
        elif name == "sampling.stop":
            gauge.set(len(value))
        else:
            gauge.set(float(value))

    # ------------------------------------------------------------ step loop, checkpoints
    def trainer_settings(self) -> dict:
        """What the step loop uses, read once per step (every rank gets rank 0's)."""
        with self.core.lock:
            c = self.cfg
            return {
                "temperature": c.sampling.temperature,
                "publish_every": c.train.publish_every,
                "lr_multiplier": c.train.lr_multiplier,
            }

    def state_dict(self) -> dict:
        """Under the hub's lock: the values the run started with, the live ones, the history."""
        return {"base": dict(self.base), "values": self.values(), "history": list(self.history)}

    def load_state_dict(self, state: dict | None) -> None:
        """Under the hub's lock, before serving: a live value comes back unless this start's
        configuration sets that field to something else than the run first started with (an
        override given with --resume wins, and is logged)."""
        if not state:
            return
        self.history = list(state.get("history", []))[-MAX_HISTORY:]
        for name, live in state.get("values", {}).items():
            if name not in TUNABLES or live == self._get(name):
                continue
            if self._get(name) != state.get("base", {}).get(name):
                logger.info("resume: %s stays %s as configured now", name, self._get(name))
                continue
            got = self._check(name, json.dumps(live))
            if isinstance(got, tuple):
                logger.warning("resume: live %s=%s not restored: %s", name, live, got[1])
                continue
            self._apply(name, got)
            logger.info("resume: %s keeps its live value %s", name, json.dumps(live))


def _loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1 on a dual-stack socket
    return (mapped or ip).is_loopback


def _who(sender: Sender) -> str:
    """Who asked, for the history: the operator key's start, or the address."""
    return f"key:{sender.key[:8]}" if sender.key else (sender.address[:45] or "local")
