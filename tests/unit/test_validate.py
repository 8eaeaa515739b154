"""microseg validate: every problem in conf/ reported at once, before any stage (and without Spark)."""

import shutil
import time
from pathlib import Path

import yaml

from microseg.cli import main

REPO = Path(__file__).resolve().parents[2]


def copy_conf(tmp_path: Path) -> Path:
    conf = tmp_path / "conf"
    shutil.copytree(REPO / "conf", conf)
    return conf


def plant_three_mistakes(conf: Path) -> None:
    """A misspelt severity, an unknown feature in a layer and an orders source without customers."""
    rules = conf / "quality" / "orders.yaml"
    rules.write_text(rules.read_text().replace("severity: warn, mostly: 0.99", "severity: warning, mostly: 0.99"))
    (conf / "local.yaml").write_text(
        (conf / "local.yaml").read_text() + "train:\n  layers:\n    engagement:\n      features: [web_sesions_90d]\n"
    )
    mapping = yaml.safe_load((conf / "sources" / "synthetic.yaml").read_text())
    mapping["sources"] = {"orders": mapping["sources"]["orders"]}
    (conf / "sources" / "synthetic.yaml").write_text(yaml.safe_dump(mapping))


def test_repo_conf_is_valid(capsys):
    assert main(["validate", "--conf", str(REPO / "conf" / "local.yaml")]) == 0
    assert "valid" in capsys.readouterr().out


def test_every_problem_reported_at_once(tmp_path, capsys):
    conf = copy_conf(tmp_path)
    plant_three_mistakes(conf)
    started = time.perf_counter()
    rc = main(["validate", "--conf", str(conf / "local.yaml")])
    seconds = time.perf_counter() - started
    err = capsys.readouterr().err
    assert rc == 2
    assert seconds < 30
    assert "3 problem(s)" in err
    assert f"quality rules {conf / 'quality' / 'orders.yaml'} are invalid: rules.4.severity" in err
    assert f"{conf / 'local.yaml'}: train.layers.engagement.features names feature(s) ['web_sesions_90d']" in err
    assert f"{conf / 'sources' / 'synthetic.yaml'}: sources.orders: entity orders needs a customers source" in err
    assert "entity: order_lines" in err


def test_run_validates_before_any_stage(tmp_path, capsys):
    conf = copy_conf(tmp_path)
    plant_three_mistakes(conf)
    lake = tmp_path / "lake"
    rc = main(["run", "--conf", str(conf / "local.yaml"), "--set", f"lake.root={lake}"])
    assert rc == 2
    assert "3 problem(s)" in capsys.readouterr().err
    assert not lake.exists()  # no session, no run lock, no table


def test_order_items_need_orders_or_lines(tmp_path, capsys):
    conf = copy_conf(tmp_path)
    mapping = yaml.safe_load((conf / "sources" / "synthetic.yaml").read_text())
    mapping["sources"] = {k: v for k, v in mapping["sources"].items() if k in ("crm_customers", "order_items")}
    (conf / "sources" / "synthetic.yaml").write_text(yaml.safe_dump(mapping))
    assert main(["validate", "--conf", str(conf / "local.yaml")]) == 2
    err = capsys.readouterr().err
    assert "1 problem(s)" in err
    assert "sources.order_items: entity order_items needs an orders source" in err
