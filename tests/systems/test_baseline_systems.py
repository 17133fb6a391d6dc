"""The repair baselines of PAPER.md §4 on the tiny backdoored digits pair: they run and report every metric."""

from __future__ import annotations

import csv
from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger

from mcrobust.callbacks import NoisyEvaluation
from mcrobust.callbacks.noisy_evaluation import DRAWS_FILE
from mcrobust.cli import run_cli
from mcrobust.data.datamodules import BonafideSettings, PoisonSettings, RobustDataModule
from mcrobust.defenses.fine_pruning import ChannelBlock, channel_activations, channel_block
from mcrobust.defenses.noisy import draw_generator, noisy_weights
from mcrobust.errors import ConfigError
from mcrobust.io.checkpoints import load_weights
from mcrobust.nets import TinyNet
from mcrobust.systems import EndpointSystem
from mcrobust.systems.fine_pruning import FinePruningSystem
from mcrobust.systems.noisy import NoisySystem
from mcrobust.testing import quiet_trainer
from mcrobust.threats.evasion import PGD

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs/experiments").glob("baseline_*.yaml"))


def trainer(tmp_path, **kwargs) -> pl.Trainer:
    return quiet_trainer(tmp_path, **{"num_sanity_val_steps": 0, "limit_val_batches": 0, **kwargs})


def datamodule(**kwargs) -> RobustDataModule:
    settings = dict(
        batch_size=32, train_on="bonafide", bonafide=BonafideSettings(size=150), eval_size=300, poison=PoisonSettings()
    )
    return RobustDataModule(**{**settings, **kwargs})


def sgd(lr: float = 0.015):
    return partial(torch.optim.SGD, lr=lr, momentum=0.9)


def in_unit_interval(results: dict, *keys: str) -> bool:
    return all(0.0 <= float(results[key]) <= 1.0 for key in keys)


def noisy_system(tiny_endpoints, **kwargs) -> NoisySystem:
    return NoisySystem(TinyNet(width=16), start=str(tiny_endpoints["a"]), end=str(tiny_endpoints["b"]), **kwargs)


def pruning_system(tiny_endpoints, endpoint: str = "a", prune_ratio: float = 0.3) -> FinePruningSystem:
    weights = str(tiny_endpoints[endpoint])
    return FinePruningSystem(TinyNet(width=16), init_weights=weights, prune_ratio=prune_ratio, optimizer=sgd())


# ------------------------------------------------------------------------------------------------ noisy model
def noisy_trainer(tmp_path, **kwargs) -> pl.Trainer:
    """A trainer with the callback that evaluates the noisy baseline's draws."""
    return trainer(tmp_path, callbacks=[NoisyEvaluation()], **kwargs)


def noisy_test(tiny_endpoints, tmp_path, **kwargs) -> tuple[NoisySystem, dict, NoisyEvaluation]:
    system, evaluation = noisy_system(tiny_endpoints, **kwargs), NoisyEvaluation()
    results = trainer(tmp_path, callbacks=[evaluation]).test(system, datamodule())[0]
    return system, results, evaluation


@pytest.fixture(scope="module")
def noisy(tiny_endpoints, tmp_path_factory):
    folder = tmp_path_factory.mktemp("noisy")
    attack = PGD(eps=16 / 255, alpha=4 / 255, steps=2)
    return (*noisy_test(tiny_endpoints, folder, num_draws=3, seed=5, eval_attack=attack), folder)


def test_noisy_reports_mean_and_spread_over_its_draws(noisy):
    system, results, evaluation, folder = noisy
    assert in_unit_interval(results, "test/acc", "test/asr", "test/acc_std", "test/asr_std", "test/robust_acc")
    assert results["test/robust_acc"] <= results["test/acc"] and "test/robust_loss_std" in results
    assert results["test/num_draws"] == 3 and results["test/loss"] > 0
    accs = torch.tensor([row["clean_acc"] for row in evaluation.rows], dtype=torch.float64)
    assert results["test/acc"] == pytest.approx(float(accs.mean()), abs=1e-6)
    assert results["test/acc_std"] == pytest.approx(float(accs.std()), abs=1e-6)
    assert results["test/acc_std"] > 0  # the draws are different models
    with (folder / DRAWS_FILE).open() as stream:
        assert [int(row["draw"]) for row in csv.DictReader(stream)] == [0, 1, 2]


def test_noisy_draws_are_distinct_and_seeded(noisy, tiny_endpoints, tmp_path):
    system, results, _, _ = noisy
    start, end = system.endpoints
    names = {name for name, _ in system.net.named_parameters()}
    draws = [
        noisy_weights(start, end, generator=draw_generator(5, k), parameters=names)["classifier.weight"]
        for k in range(3)
    ]
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])
    torch.testing.assert_close(system.net.classifier.weight, draws[2])  # the net holds the last draw
    _, again, _ = noisy_test(tiny_endpoints, tmp_path, num_draws=3, seed=5, eval_attack=system.eval_attack)
    assert again == results
    _, other, _ = noisy_test(tiny_endpoints, tmp_path, num_draws=3, seed=6)
    assert other["test/loss"] != results["test/loss"]  # accuracy near chance can tie; the loss cannot


def test_noisy_refuses_to_fit_and_needs_both_endpoints(tiny_endpoints, tmp_path):
    system = noisy_system(tiny_endpoints)
    with pytest.raises(ConfigError, match="mcrobust test"):
        trainer(tmp_path, max_epochs=1).fit(system, datamodule())
    with pytest.raises(ConfigError, match="both endpoints"):
        noisy_trainer(tmp_path).test(NoisySystem(TinyNet(width=16), start=str(tiny_endpoints["a"])), datamodule())


def test_noisy_refuses_to_run_without_its_evaluation_callback(tiny_endpoints, tmp_path):
    with pytest.raises(ConfigError, match="mcrobust.callbacks.NoisyEvaluation"):
        trainer(tmp_path).test(noisy_system(tiny_endpoints), datamodule())


# ------------------------------------------------------------------------------------ fine-tuning, from scratch
@pytest.mark.parametrize("init", ["a", None], ids=["fine-tuning", "from-scratch"])
def test_fine_tuning_and_scratch_train_on_bonafide_data_and_report_all_metrics(tiny_endpoints, tmp_path, init):
    pl.seed_everything(0)
    weights = str(tiny_endpoints[init]) if init else None
    system = EndpointSystem(TinyNet(width=16), optimizer=sgd(0.015 if init else 0.01), init_weights=weights)
    fit = trainer(tmp_path, max_epochs=4)
    fit.fit(system, datamodule())
    results = {k: v for d in fit.test(system, datamodule()) for k, v in d.items()}
    assert in_unit_interval(results, "test/acc", "test/asr")
    if init:  # the tampered model keeps its clean accuracy under fine-tuning
        assert results["test/acc"] >= 0.85


# ------------------------------------------------------------------------------------------------ Fine-Pruning
@pytest.fixture(scope="module")
def pruned(tiny_endpoints, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pruned")
    pl.seed_everything(0)
    system = pruning_system(tiny_endpoints)
    fit = trainer(folder, max_epochs=3, logger=CSVLogger(str(folder)))
    fit.fit(system, datamodule())
    results = {k: v for d in fit.test(system, datamodule()) for k, v in d.items()}
    path = folder / "pruned.ckpt"
    fit.save_checkpoint(path)
    return system, results, fit, path


def test_fine_pruning_prunes_round_ratio_c_least_active_channels(pruned, tiny_endpoints):
    system, results, fit, _ = pruned
    assert system.layer == "features.9" and len(system.pruned_channels) == round(0.3 * 64) == 19
    tampered = TinyNet(width=16)
    tampered.load_state_dict(load_weights(tiny_endpoints["a"], template=tampered))
    dm = datamodule()
    dm.setup("fit")
    block = ChannelBlock(tampered.features[9], tampered.features[10], relu=True)
    activations = channel_activations(tampered, block, dm.bn_dataloader())
    assert system.pruned_channels == sorted(torch.argsort(activations)[:19].tolist())
    assert in_unit_interval(results, "test/acc", "test/asr")
    with open(Path(fit.logger.log_dir) / "metrics.csv") as stream:
        logged = [row for row in csv.DictReader(stream) if row.get("prune/channels")]
    assert float(logged[0]["prune/channels"]) == 19 and float(logged[0]["prune/ratio"]) == 0.3


def test_pruned_channels_stay_zero_through_fine_tuning_and_export(pruned):
    system, _, _, path = pruned
    channels = system.pruned_channels
    conv, bn = system.net.features[9], system.net.features[10]
    assert conv.weight[channels].abs().max() == 0 and bn.weight[channels].abs().max() == 0
    assert bn.bias[channels].abs().max() == 0
    kept = [c for c in range(64) if c not in channels]
    assert conv.weight[kept].abs().amax(dim=(1, 2, 3)).min() > 0
    bare = TinyNet(width=16)
    bare.load_state_dict(load_weights(path, template=bare))  # plain keys, no hook, no mask
    dm = datamodule()
    dm.setup("test")
    x = dm.eval_datasets()["clean"].tensors()[0][:64]
    system.net.eval(), bare.eval()
    with torch.no_grad():
        torch.testing.assert_close(bare(x), system.net(x), rtol=0, atol=0)
        assert bare.features[:12](x)[:, channels].abs().max() == 0


def test_fine_pruning_resumes_with_its_mask_instead_of_pruning_again(pruned, tiny_endpoints, tmp_path):
    system, _, _, path = pruned
    resumed = pruning_system(tiny_endpoints, endpoint="b", prune_ratio=0.5)
    trainer(tmp_path, max_epochs=4).fit(resumed, datamodule(), ckpt_path=str(path))
    assert resumed.pruned_channels == system.pruned_channels
    assert resumed.net.features[9].weight[system.pruned_channels].abs().max() == 0


def test_fine_pruning_needs_weights_and_a_valid_layer(tmp_path):
    with pytest.raises(ConfigError, match="init_weights"):
        trainer(tmp_path, max_epochs=1).fit(FinePruningSystem(TinyNet(width=16)), datamodule())
    with pytest.raises(ConfigError, match="'classifier'"):
        FinePruningSystem(TinyNet(width=16), layer="classifier")
    with pytest.raises(ConfigError, match="prune_ratio"):
        FinePruningSystem(TinyNet(width=16), prune_ratio=1.0)


def test_channel_block_of_the_system_layer_is_found_by_tracing(pruned):
    system, _, _, _ = pruned
    block = channel_block(system.net, system.pruned_layer, torch.rand(2, 3, 32, 32))
    assert block.batch_norm is system.net.features[10] and block.relu


# ---------------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_baseline_config_builds_its_system(config, tmp_path):
    cli = run_cli(["--config", str(config), "--trainer.default_root_dir", str(tmp_path)], run=False)
    kind = config.stem.split("_")[1]
    assert type(cli.model) is {"noisy": NoisySystem, "fineprune": FinePruningSystem}.get(kind, EndpointSystem)
    assert cli.datamodule.bonafide.size and cli.datamodule.poison is not None  # the trigger gives test/asr
    if kind == "noisy":
        assert cli.model.start and cli.model.end and cli.model.num_draws == 20
        assert sum(isinstance(callback, NoisyEvaluation) for callback in cli.trainer.callbacks) == 1
    else:
        assert cli.datamodule.train_on == "bonafide" and bool(cli.model.init_weights) == (kind != "scratch")


# ------------------------------------------------------------------------------------------------------- DDP
DDP = dict(accelerator="cpu", devices=2, strategy="ddp_spawn")


@pytest.mark.slow
@pytest.mark.ddp
def test_two_process_noisy_evaluation_equals_one_process(noisy, tiny_endpoints, tmp_path):
    """Every rank draws the same weights and recomputes BN on all bonafide data; torchmetrics sums the shards.

    PGD starts are drawn per sample index, so the robust accuracy is the same too.
    """
    first, one_process, _, _ = noisy
    system = noisy_system(tiny_endpoints, num_draws=3, seed=5, eval_attack=first.eval_attack)
    two_process = noisy_trainer(tmp_path, **DDP).test(system, datamodule())[0]
    assert two_process == pytest.approx(one_process, abs=1e-6)


@pytest.mark.slow
@pytest.mark.ddp
def test_two_process_fine_pruning_prunes_the_same_channels(pruned, tiny_endpoints, tmp_path):
    single, _, _, _ = pruned
    pl.seed_everything(0)
    system = pruning_system(tiny_endpoints)
    trainer(tmp_path, max_epochs=1, **DDP).fit(system, datamodule())
    assert system.pruned_channels == single.pruned_channels  # weights and buffers come back from rank 0
