"""Threat models through the real systems: backdoored endpoints, PGD adversarial training, error injection."""

from __future__ import annotations

from functools import partial

import pytorch_lightning as pl
import torch

from mcrobust.data.datamodules import PoisonSettings, RobustDataModule
from mcrobust.io.checkpoints import load_weights
from mcrobust.nets import TinyNet
from mcrobust.systems import AdversarialSystem, EndpointSystem, InjectionSystem
from mcrobust.testing import quiet_trainer
from mcrobust.threats.evasion import PGD
from mcrobust.threats.injection import InjectionSets


def evaluate(ckpt, eval_attack=None) -> dict[str, float]:
    """test/acc, test/asr (and robust metrics) of a saved endpoint on the digits test split."""
    system = EndpointSystem(TinyNet(width=16), init_weights=str(ckpt), eval_attack=eval_attack)
    system.net.load_state_dict(load_weights(ckpt, template=system.net))
    results = quiet_trainer(
        num_sanity_val_steps=0,
    ).test(system, RobustDataModule(poison=PoisonSettings()), verbose=False)
    return {k: v for result in results for k, v in result.items()}


def test_backdoored_endpoints_have_high_asr_and_the_clean_one_low(tiny_endpoints):
    for name in ("a", "b"):
        metrics = evaluate(tiny_endpoints[name])
        assert metrics["test/asr"] >= 0.95, name
        assert metrics["test/acc"] >= 0.9, name
    clean = evaluate(tiny_endpoints["clean"])
    assert clean["test/asr"] <= 0.1 and clean["test/acc"] >= 0.9


def test_adversarial_training_raises_robust_accuracy(tiny_endpoints):
    attack = PGD(eps=0.1, alpha=0.025, steps=10)
    regular = evaluate(tiny_endpoints["clean"], eval_attack=attack)
    pl.seed_everything(0)
    system = AdversarialSystem(
        TinyNet(width=16),
        optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9),
        train_attack=PGD(eps=0.1, alpha=0.03, steps=5),
        eval_attack=attack,
    )
    datamodule = RobustDataModule(batch_size=64, eval_size=200)
    quiet_trainer(max_epochs=6, limit_val_batches=0).fit(system, datamodule)
    results = quiet_trainer(
        num_sanity_val_steps=0,
    ).test(system, datamodule, verbose=False)[0]
    assert results["test/robust_acc"] >= regular["test/robust_acc"] + 0.3, (results, regular)
    assert results["test/acc"] >= 0.7


def test_injection_system_flips_targets_and_keeps_the_rest(tiny_endpoints, tmp_path):
    pl.seed_everything(0)
    system = InjectionSystem(
        TinyNet(width=16), weights=str(tiny_endpoints["clean"]), param_name="features.9.weight", num_keep=300
    )
    before = {k: v.clone() for k, v in load_weights(tiny_endpoints["clean"], template=system.net).items()}
    trainer = quiet_trainer(
        num_sanity_val_steps=0, max_epochs=1, limit_train_batches=2, default_root_dir=str(tmp_path), logger=True
    )
    trainer.fit(system, RobustDataModule())
    metrics = trainer.callback_metrics
    assert float(metrics["injection/success"]) == 1.0
    assert float(metrics["injection/keep_acc"]) >= 0.98
    after = system.net.state_dict()
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert changed == ["features.9.weight"]
    sets = InjectionSets.load(tmp_path / "lightning_logs" / "version_0" / "injection_sets.pt")
    assert len(sets.target_labels) == 4 and bool((sets.target_labels != sets.target_true_labels).all())
