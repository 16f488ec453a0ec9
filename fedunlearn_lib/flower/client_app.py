"""The node side: train, evaluate and the local proc on the node's own data.

Node config (``flower-supernode --node-config``; the simulation sets the first two):

- ``partition-id`` and ``num-partitions``: this node is client ``partition-id`` of the
  run's data set split by ``fang_partition`` exactly as the in-process simulator splits it
  (``num-partitions`` must equal the run's ``num-clients``);
- or ``data-dir`` and ``client-id``: this node's own images, ``data-dir/<class>/*``;
- ``threads`` (optional): torch threads on this node (else the run config's ``threads``).

Only weights, counts, losses and the local proc's class x channel matrices leave the node.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from ..data import BatchTransform, load_client_folder
from ..experiment import prepare_data
from ..federated import ClientData, FedConfig, local_train
from ..masking import ChannelMask
from ..models import build_model
from ..partition import fang_partition
from ..procs import local_proc
from .records import experiment_config, float_state, load_float_state, upload_record

app = ClientApp()


@dataclass
class Node:
    """This node's data and what it needs to read it."""

    data: ClientData
    transform: BatchTransform
    num_classes: int

    def without(self, classes: list[int]) -> ClientData:
        """The node's samples outside ``classes`` (fine-tuning and retraining)."""
        keep = ~torch.isin(self.data.y, torch.tensor(classes, dtype=torch.long))
        return ClientData(self.data.client_id, self.data.x[keep], self.data.y[keep])


@lru_cache(maxsize=4)
def _partition(run_config_json: str, pid: int, num_partitions: int) -> ClientData:
    cfg, _ = experiment_config(json.loads(run_config_json))
    if num_partitions != cfg.federation.num_clients:
        raise ValueError(f"node has num-partitions={num_partitions}, the run num-clients="
                         f"{cfg.federation.num_clients}")
    data = prepare_data(cfg)
    idx = fang_partition(data.train_y, num_partitions, cfg.federation.q, data.num_classes,
                         cfg.federation.seed)[pid]
    return ClientData(pid, data.train_x[idx], data.train_y[idx])


@lru_cache(maxsize=4)
def _folder(path: str, classes_json: str, client_id: int) -> ClientData:
    x, y = load_client_folder(path, tuple(json.loads(classes_json)))
    return ClientData(client_id, x, y)


def node(msg: Message, context: Context) -> Node:
    """This node's data, as its node config says, and the federation's normalization."""
    conf, nc = msg.content["config"], context.node_config
    threads = nc.get("threads", context.run_config.get("threads", "none"))
    if str(threads) != "none":
        torch.set_num_threads(int(threads))
    if "partition-id" in nc:
        data = _partition(json.dumps(dict(context.run_config), sort_keys=True),
                          int(nc["partition-id"]), int(nc["num-partitions"]))
    elif "data-dir" in nc:
        if "client-id" not in nc:
            raise ValueError("a node with data-dir needs a client-id in its node config")
        data = _folder(str(nc["data-dir"]), str(conf["classes"]), int(nc["client-id"]))
    else:
        raise ValueError(f"node config {dict(nc)} names neither partition-id nor data-dir")
    return Node(data, BatchTransform(conf["mean"], conf["std"], "cpu",
                                     bool(conf["channels-last"]), int(conf["crop-padding"]),
                                     bool(conf["flip"])),
                len(json.loads(conf["classes"])))


def model_from(msg: Message, num_classes: int) -> torch.nn.Module:
    """The global model the server sent, with its mask applied."""
    conf = msg.content["config"]
    model = build_model(str(conf["model"]), num_classes)
    load_float_state(model, msg.content["arrays"], "server weights")
    ChannelMask(json.loads(conf["mask"])).apply(model)
    if conf["channels-last"]:
        model = model.to(memory_format=torch.channels_last)
    return model


@app.train()
def train(msg: Message, context: Context) -> Message:
    """FedAvg's local update, exactly as the in-process simulator runs it."""
    conf = msg.content["config"]
    me = node(msg, context)
    client = me.without(json.loads(conf["exclude"]))
    model = model_from(msg, me.num_classes)
    cfg = FedConfig(**json.loads(conf["federation"]))
    loss_sum, seen = local_train(model, client, me.transform, cfg, int(conf["server-round"]),
                                 ChannelMask(json.loads(conf["mask"])))
    metrics = MetricRecord({"train-loss": float(loss_sum) / max(seen, 1),
                            "num-examples": len(client)})
    return Message(RecordDict({"arrays": float_state(model), "metrics": metrics}),
                   reply_to=msg)


@app.evaluate()
@torch.inference_mode()
def evaluate(msg: Message, context: Context) -> Message:
    """Correct predictions on this node's own images, counted per class."""
    me = node(msg, context)
    model = model_from(msg, me.num_classes).eval()
    correct = torch.zeros(me.num_classes, dtype=torch.long)
    for s in range(0, len(me.data), 500):
        hit = model(me.transform(me.data.x[s:s + 500])).argmax(1) == me.data.y[s:s + 500]
        correct += torch.bincount(me.data.y[s:s + 500][hit], minlength=me.num_classes)
    counts = torch.bincount(me.data.y, minlength=me.num_classes)
    return Message(RecordDict({"per-class": ArrayRecord(torch_state_dict={
        "correct": correct, "counts": counts})}), reply_to=msg)


@app.query("info")
def info(msg: Message, context: Context) -> Message:
    """This node's client id and how many images of each class it holds."""
    me = node(msg, context)
    counts = torch.bincount(me.data.y, minlength=me.num_classes)
    return Message(RecordDict({"info": MetricRecord({"client-id": me.data.client_id}),
                               "counts": ArrayRecord(torch_state_dict={"counts": counts})}),
                   reply_to=msg)


@app.query("local_proc")
def query_local_proc(msg: Message, context: Context) -> Message:
    """The paper's local proc: class x channel mean activations of every conv layer."""
    me = node(msg, context)
    model = model_from(msg, me.num_classes)
    max_samples = int(msg.content["config"]["max-samples"]) or None
    up = local_proc(model, me.data, me.transform, me.num_classes, max_samples=max_samples)
    return Message(upload_record(up), reply_to=msg)
