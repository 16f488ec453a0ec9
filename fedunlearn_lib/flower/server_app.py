"""The server side: ``run_experiment`` with the clients on Flower nodes.

Every federated round is Flower's ``FedAvg`` (its aggregation, its reply checks) on the
nodes the simulator's sampling rule picks; the unlearning request queries the sampled
participants' local procs and runs our server proc on their uploads. Replies that are
missing, errors, malformed or non-finite are left out and named in the log; a request
with fewer than ``min-replies`` valid replies stops the run with an error naming the nodes.
"""
from __future__ import annotations

from dataclasses import asdict
from logging import INFO, WARNING
from pathlib import Path
from typing import Iterable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from ..data import ImageData
from ..experiment import ExperimentConfig, load_run, prepare_data, run_experiment
from ..federated import Federation
from ..io import atomic_write_json
from ..procs import Upload, aggregate
from .records import (checked_state, experiment_config, float_state, load_float_state,
                      node_config, upload_from)

app = ServerApp()


class ChosenFedAvg(FedAvg):
    """Flower's FedAvg, training on the nodes ``nodes`` names for the round (the
    simulator's sampling rule) instead of a fresh random draw."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes: list[int] = []

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return [Message(record, dst_node_id=n, message_type=MessageType.TRAIN,
                        group_id=str(server_round)) for n in self.nodes]


class FlowerClients:
    """The federation's clients as Flower nodes (``federated.Remote``)."""

    def __init__(self, grid: Grid, data: ImageData, cfg: ExperimentConfig,
                 timeout: float, min_replies: int) -> None:
        self.grid, self.data, self.cfg = grid, data, cfg
        self.timeout, self.min_replies = float(timeout), int(min_replies)
        self.strategy = ChosenFedAvg()
        nodes = sorted(grid.get_node_ids())
        replies = self._exchange([self._message(n, "query.info", {}) for n in nodes], "info")
        self.node_of: dict[int, int] = {}
        self.counts: dict[int, torch.Tensor] = {}
        for n, reply in replies.items():
            cid = int(reply.content["info"]["client-id"])
            if cid in self.node_of:
                raise ValueError(f"nodes {self.node_of[cid]} and {n} both say they are "
                                 f"client {cid}")
            self.node_of[cid] = n
            self.counts[cid] = reply.content["counts"].to_torch_state_dict()["counts"].long()
        n_clients = cfg.federation.num_clients
        odd = sorted(c for c in self.node_of if not 0 <= c < n_clients)
        if odd or not self.node_of:
            raise ValueError(f"the run expects clients 0..{n_clients - 1} (num-clients); "
                             f"the nodes say they are clients {sorted(self.node_of)}")
        offline = sorted(set(range(n_clients)) - set(self.node_of))
        if offline:
            log(WARNING, "fedunlearn: no node answers for client(s) %s; they sit out every "
                "round they are drawn for", offline)
        log(INFO, "fedunlearn: %d clients on nodes %s", len(self.node_of),
            [self.node_of[c] for c in sorted(self.node_of)])

    # ------------------------------------------------------------ messaging
    def _config(self, **extra) -> ConfigRecord:
        return node_config(self.data, model=self.cfg.model,
                           **{"channels-last": self.cfg.uses_channels_last()}, **extra)

    def _message(self, node: int, kind: str, extra: dict,
                 arrays: ArrayRecord | None = None) -> Message:
        conf = self._config(**extra)
        content = RecordDict({"config": conf} if arrays is None else
                             {"arrays": arrays, "config": conf})
        return Message(content, dst_node_id=node, message_type=kind)

    def _exchange(self, messages: list[Message], what: str) -> dict[int, Message]:
        """Send, wait up to the timeout, and return every reply without an error, by node;
        missing and failed nodes are logged."""
        sent = [m.metadata.dst_node_id for m in messages]
        replies = list(self.grid.send_and_receive(messages, timeout=self.timeout))
        # the SuperLink answers for a node it has lost (src: the SuperLink itself), so
        # replies are matched to nodes by the message they answer where the grid says
        node_of = {m.metadata.message_id: m.metadata.dst_node_id for m in messages
                   if m.metadata.message_id}
        good: dict[int, Message] = {}
        failed: set[int] = set()
        for r in replies:
            src = node_of.get(r.metadata.reply_to_message_id, r.metadata.src_node_id)
            if r.has_error():
                log(WARNING, "fedunlearn: %s: node %s failed (%s); left out", what, src,
                    r.error.reason)
                failed.add(src)
            else:
                good[src] = r
        silent = [n for n in sent if n not in good and n not in failed]
        if silent:
            log(WARNING, "fedunlearn: %s: no reply from node(s) %s within %.0f s; left out",
                what, silent, self.timeout)
        return good

    def _enough(self, valid: list[int], asked: list[int], what: str) -> None:
        if len(valid) < min(self.min_replies, len(asked)) or not valid:
            raise RuntimeError(f"{what}: only {len(valid)} valid replies (nodes {valid}) of "
                               f"{len(asked)} asked (nodes {asked}); min-replies is "
                               f"{self.min_replies}")

    # --------------------------------------------------------- Remote protocol
    def holders(self, cls: int) -> list[int]:
        return sorted(c for c, n in self.counts.items() if n[cls] > 0)

    def online(self, chosen: list[int]) -> list[int]:
        """The clients of ``chosen`` that have a node."""
        return [c for c in chosen if c in self.node_of]

    def train_round(self, fed: Federation, chosen: list[int], rnd: int) -> float:
        keep = torch.ones(self.data.num_classes, dtype=torch.bool)
        keep[fed.exclude] = False
        chosen = [c for c in self.online(chosen) if int(self.counts[c][keep].sum()) >= 2]
        if not chosen:
            return float("nan")
        self.strategy.nodes = [self.node_of[c] for c in chosen]
        conf = self._config(exclude=fed.exclude, mask=fed.mask.state(),
                            federation=asdict(fed.round_config(rnd)))
        messages = list(self.strategy.configure_train(rnd, float_state(fed.model), conf,
                                                      self.grid))
        replies = self._exchange(messages, f"round {rnd}")
        valid = []
        for n, reply in replies.items():
            try:
                checked_state(fed.model, reply.content["arrays"], f"node {n}")
                valid.append(n)
            except (KeyError, ValueError) as err:
                log(WARNING, "fedunlearn: round %d: node %s sent unusable weights (%s); "
                    "left out", rnd, n, err)
        self._enough(valid, self.strategy.nodes, f"round {rnd}")
        arrays, metrics = self.strategy.aggregate_train(rnd, [replies[n] for n in valid])
        load_float_state(fed.model, arrays, f"round {rnd}'s average")
        return float(metrics["train-loss"])

    def local_procs(self, fed: Federation, chosen: list[int],
                    max_samples: int | None) -> list[Upload]:
        asked = [self.node_of[c] for c in self.online(chosen)]
        client_of = {n: c for c, n in self.node_of.items()}
        messages = [self._message(n, "query.local_proc",
                                  {"mask": fed.mask.state(), "max-samples": max_samples or 0},
                                  float_state(fed.model)) for n in asked]
        replies = self._exchange(messages, "local proc")
        reference = _zero_upload(fed)
        uploads = []
        for n, reply in replies.items():
            try:
                up = upload_from(reply.content, client_of[n])
                aggregate([reference, up])  # raises naming the client if malformed
                uploads.append(up)
            except (KeyError, ValueError, RuntimeError) as err:
                log(WARNING, "fedunlearn: local proc: node %s (client %s) sent an unusable "
                    "upload (%s); left out", n, client_of[n], err)
        self._enough([self.node_of[u.client_id] for u in uploads], asked, "local proc")
        return uploads

    def client_accuracy(self, model: torch.nn.Module, forget: list[int]) -> dict:
        """U-/R-set accuracy of ``model`` on the clients' own (training) images."""
        nodes = [self.node_of[c] for c in sorted(self.node_of)]
        messages = [self._message(n, "evaluate", {"mask": {}}, float_state(model))
                    for n in nodes]
        replies = self._exchange(messages, "client evaluation")
        correct = torch.zeros(self.data.num_classes, dtype=torch.long)
        counts = torch.zeros_like(correct)
        for reply in replies.values():
            per_class = reply.content["per-class"].to_torch_state_dict()
            correct += per_class["correct"].long()
            counts += per_class["counts"].long()
        u = torch.zeros_like(correct, dtype=torch.bool)
        u[forget] = True
        return {"u_acc": (correct[u].sum() / counts[u].sum().clamp(min=1)).item(),
                "r_acc": (correct[~u].sum() / counts[~u].sum().clamp(min=1)).item(),
                "nodes": len(replies)}


def _zero_upload(fed: Federation) -> Upload:
    """An all-zero upload of the right shapes: the yardstick a reply is checked against."""
    c = fed.data.num_classes
    convs = {n: m for n, m in fed.model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    return Upload(-1, {n: torch.zeros(c, m.out_channels) for n, m in convs.items()},
                  torch.zeros(c, dtype=torch.float64))


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Pretrain (or load), retrain, unlearn and fine-tune; write ``out/metrics.json``."""
    cfg, settings = experiment_config(context.run_config)
    if cfg.federation.algorithm != "fedavg":
        raise ValueError(f"the Flower app trains with FedAvg; algorithm="
                         f"{cfg.federation.algorithm!r} runs only in the in-process simulator")
    if cfg.unlearning.apply != "mask":
        raise ValueError(f"the Flower app prunes by masking; apply={cfg.unlearning.apply!r} "
                         f"(channel removal) runs only in the in-process simulator")
    data = prepare_data(cfg)
    out = Path(str(settings["out"])).expanduser().resolve()
    clients = FlowerClients(grid, data, cfg, settings["round-timeout"], settings["min-replies"])
    metrics = run_experiment(cfg, out, progress=False,
                             pretrained=str(settings["pretrained"]) or None, remote=clients)
    run = load_run(out)
    metrics["flower"] = {"nodes": len(clients.node_of),
                         "clients_unlearned": clients.client_accuracy(run.unlearned, cfg.forget),
                         "run_config": dict(context.run_config)}
    atomic_write_json(metrics, out / "metrics.json")
    log(INFO, "fedunlearn: wrote %s (raw R %.3f, unlearned U %s R %.3f, speedup %s)",
        out / "metrics.json", metrics["raw"]["r_acc"], metrics["finetuned"]["u_acc"],
        metrics["finetuned"]["r_acc"], metrics["speedup"])
