"""The hate-speech sources (real files in the data mirror, and broken copies of them), the stratified sampling,
and the functional suite: that it catches the failure modes it names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from evals.scorers import functional
from evals.scorers.corpus import DEFAULT_SOURCES, SOURCES, build_corpus, load_sources, parse_sources, stratified_sample
from evals.scorers.datasets import Example, ToxicityDataError, example_side, heldout_side, labels, locate
from evals.scorers.hate_sources import (CONAN, DYNAHATE, ETHOS, HATEMOJI, OLID, QUOTE_FRAMES, QUOTE_MAX_WORDS, SBIC,
                                        read_conan_quoted, read_dynahate, read_ethos, read_hatemoji, read_olid,
                                        read_sbic)
from evals.scorers.loo import fold_sources


@pytest.fixture(scope="module")
def loaded(shared_data):
    return load_sources(SOURCES, mirror=str(shared_data), exclude=functional.texts())


def test_every_source_reads_with_its_documented_labels(loaded):
    for key, src in loaded.items():
        r = src.report
        assert r.usable == len(src.examples) > 600, key
        assert r.rows_read >= r.usable + sum(v for k, v in r.skipped.items() if k != "functional_suite_text"), key
        for e in src.examples:
            assert set(e.labels) == {"toxicity", "identity_attack", "insult", "threat"}
            assert all(v in (None, 0.0, 1.0) for v in e.labels.values())
            if e.labels["toxicity"] == 1.0:
                assert e.labels["identity_attack"] in (1.0, None)
    tox = {k: {e.labels["toxicity"] for e in s.examples} for k, s in loaded.items()}
    assert tox["sbic"] == {1.0, None} and tox["olid"] == {0.0, None}  # one-class sources (LOO: no AUC there)
    assert tox["conan_quoted"] == {0.0}  # counter-speech only, built from CONAN's pairs
    assert all({0.0, 1.0} <= t for k, t in tox.items() if k not in ("sbic", "olid", "conan_quoted")), tox
    threats = {k for k, s in loaded.items() if any(e.labels["threat"] == 1.0 for e in s.examples)}
    assert threats == {"implicit_hate", "hatemoji", "ethos"}
    conan = loaded["conan"]
    assert conan.report.skipped["not_english"] > 10000  # CONAN.csv's French and Italian rows
    assert loaded["cmsb_sexism"].report.origin["adversarial_edits"] > 2000
    assert not any("MENTION" in e.text for e in loaded["cmsb_sexism"].examples)
    assert loaded["olid"].report.origin["invalid_utf8_bytes_replaced"] > 0


def test_profanity_and_in_group_offence_never_teach_toxicity(loaded):
    """OLID's untargeted profanity is 0 for toxicity; HateXplain's and Davidson's "offensive" say nothing."""
    untargeted = [e for e in loaded["olid"].examples if e.labels["insult"] == 0.0 and e.labels["threat"] is None]
    assert len(untargeted) > 300 and all(e.labels["toxicity"] == 0.0 for e in untargeted)
    offensive = [e for e in loaded["hatexplain"].examples if e.labels["insult"] == 1.0 and
                 e.labels["identity_attack"] == 0.0]
    assert offensive and all(e.labels["toxicity"] is None for e in offensive)


def test_functional_suite_never_reaches_training(tmp_path, monkeypatch):
    case = functional.cases()[0].text
    root = tmp_path / "mirror" / "hate" / "dynahate"
    root.mkdir(parents=True)
    (root / "dynahate_train.csv").write_text(f"text,label\n\"{case}\",1\nsomething else entirely,0\n",
                                             encoding="utf-8")
    (root / "dynahate_test.csv").write_text("text,label\n", encoding="utf-8")
    monkeypatch.setenv("HARMGATE_DATA_MIRROR", str(tmp_path / "mirror"))  # the variable wins over the argument
    data = load_sources(["dynahate"], exclude=functional.texts())
    assert [e.text for e in data["dynahate"].examples] == ["something else entirely"]
    assert data["dynahate"].report.skipped["functional_suite_text"] == 1


def _copy_with(src: Path, dst: Path, extra: str, keep: int = 20) -> None:
    lines = src.read_text(encoding="utf-8", errors="replace").splitlines()[:keep]
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")


def test_bad_rows_are_counted_by_reason(shared_data, tmp_path):
    hate = shared_data / "hate"
    _copy_with(hate / "dynahate" / "dynahate_train.csv", tmp_path / "d" / "dynahate_train.csv",
               'a text with a bad label,maybe,x,train\n,1,hate,train\n')
    _copy_with(hate / "dynahate" / "dynahate_test.csv", tmp_path / "d" / "dynahate_test.csv", "")
    ex, rep = read_dynahate(tmp_path / "d")
    assert rep.skipped["bad_label"] == 1 and rep.skipped["missing_text"] == 1 and len(ex) == rep.usable >= 15

    _copy_with(hate / "ethos" / "Ethos_Dataset_Binary.csv", tmp_path / "e" / "Ethos_Dataset_Binary.csv",
               "an unreadable share;lots\n")
    _copy_with(hate / "ethos" / "Ethos_Dataset_Multi_Label.csv", tmp_path / "e" / "Ethos_Dataset_Multi_Label.csv", "")
    ex, rep = read_ethos(tmp_path / "e")
    assert rep.skipped["bad_label"] == 1 and any(e.labels["threat"] is not None for e in ex)

    _copy_with(hate / "sbic_partial" / "sbic_dev_offensive_spans.jsonl",
               tmp_path / "s" / "sbic_dev_offensive_spans.jsonl", "{not json\n")
    _copy_with(hate / "sbic_partial" / "sbic_test_offensive_spans.jsonl",
               tmp_path / "s" / "sbic_test_offensive_spans.jsonl", "")
    ex, rep = read_sbic(tmp_path / "s")
    assert rep.skipped["invalid_json"] == 1 and ex

    _copy_with(hate / "olid" / "olid-training-v1.0.tsv", tmp_path / "o.tsv", "1\tsome tweet\tMAYBE\tNULL\tNULL\n")
    ex, rep = read_olid(tmp_path / "o.tsv")
    assert rep.skipped["bad_label"] == 1

    with pytest.raises(ToxicityDataError, match="train.csv is missing"):
        read_hatemoji(tmp_path / "d")


def test_sources_need_the_mirror_or_a_path(monkeypatch):
    monkeypatch.delenv("HARMGATE_DATA_MIRROR", raising=False)
    for ref in (DYNAHATE, ETHOS, OLID, SBIC, HATEMOJI, CONAN):
        with pytest.raises(ToxicityDataError, match="no data mirror is set"):
            locate(ref, None, None)
    with pytest.raises(ValueError, match="unknown toxicity source"):
        parse_sources("dynahate,hatecheck")


def test_opt_in_sources_join_only_when_named():
    assert "conan_quoted" in SOURCES and "conan_quoted" not in DEFAULT_SOURCES
    assert parse_sources(None) == parse_sources("default") == parse_sources("all") == DEFAULT_SOURCES
    assert parse_sources("default,conan_quoted") == DEFAULT_SOURCES + ("conan_quoted",)
    assert parse_sources("conan,conan_quoted,conan") == ("conan", "conan_quoted")


def test_hatemoji_emoji_are_spelled_out(loaded):
    texts = [e.text for e in loaded["hatemoji"].examples]
    assert any("(hocho)" in t for t in texts)
    assert not any(re.search("[\U0001F300-\U0001FAFF]", t) for t in texts)


def _ex(i: int, **lab) -> Example:
    return Example(f"text {i}", labels(**lab), "s", f"text {i}")


def test_stratified_sample_balances_label_patterns():
    rare = [_ex(i, toxicity=1.0, threat=1.0) for i in range(10)]
    hateful = [_ex(100 + i, toxicity=1.0) for i in range(200)]
    clean = [_ex(1000 + i, toxicity=0.0) for i in range(2000)]
    got = stratified_sample(rare + hateful + clean, 210, seed=0)
    assert len(got) == 210
    assert sum(e.labels["threat"] == 1.0 for e in got) == 10  # all of the rare pattern
    assert sum(e.labels["toxicity"] == 0.0 for e in got) == 100  # the rest split evenly
    assert stratified_sample(rare + hateful + clean, 210, seed=0) == got  # seeded
    assert len(stratified_sample(rare, None, seed=0)) == 10


def test_corpus_split_is_disjoint_and_sampled(loaded):
    sub = {k: loaded[k] for k in ("dynahate", "ethos")}
    corpus = build_corpus(sub, seed=0, heldout_fraction=0.15, scale=0.1)
    assert not {e.group for e in corpus.train} & {e.group for e in corpus.heldout}
    assert sub["dynahate"].report.origin["train"] == 130 and sub["ethos"].report.origin["heldout"] == 150
    hateful = sum(e.labels["toxicity"] == 1.0 for e in corpus.train if e.source == "dynahate")
    assert hateful == 65  # balanced, although DynaHate is 54% hate


def test_quoted_counter_speech_is_built_from_conan_pairs(loaded):
    quoted = loaded["conan_quoted"]
    hate = {e.group for e in loaded["conan"].examples if e.labels["toxicity"] == 1.0}
    counter = {e.group for e in loaded["conan"].examples if e.labels["toxicity"] == 0.0}
    assert len(quoted.examples) > 5000 and quoted.report.skipped["too_long_to_quote"] > 1000
    used = {frame for e in quoted.examples for frame in QUOTE_FRAMES
            if re.fullmatch(re.escape(frame).replace(r"\{hs\}", ".+").replace(r"\{cn\}", ".+"), e.text, re.S)}
    assert used == set(QUOTE_FRAMES)
    for e in quoted.examples:
        assert e.labels == labels(0.0, 0.0)  # insult and threat unsaid: the quote may carry either
        assert len(e.text.split()) <= QUOTE_MAX_WORDS + 4  # the frame's own words
        hs, cn = e.side_keys
        assert hs in e.group and cn in e.group
    # the pairs are CONAN's: most quoted posts are CONAN hate speech, most replies its counter-narratives
    assert sum(e.side_keys[0] in hate for e in quoted.examples) > 0.9 * len(quoted.examples)
    assert sum(e.side_keys[1] in counter for e in quoted.examples) > 0.9 * len(quoted.examples)


def test_a_quoting_example_sits_on_the_side_of_the_texts_it_quotes(loaded):
    """Otherwise a held-out CONAN post (or reply) would be trained on inside a quote."""
    sub = {k: loaded[k] for k in ("conan", "conan_quoted")}
    corpus = build_corpus(sub, seed=3, heldout_fraction=0.15, train_counts={"conan": None, "conan_quoted": None},
                          heldout_counts={"conan": None, "conan_quoted": None})
    held_conan = {e.group for e in corpus.heldout if e.source == "conan"}
    train_conan = {e.group for e in corpus.train if e.source == "conan"}
    train_quoted = [e for e in corpus.train if e.source == "conan_quoted"]
    held_quoted = [e for e in corpus.heldout if e.source == "conan_quoted"]
    assert len(train_quoted) > 1000 and len(held_quoted) > 50
    assert not any(set(e.side_keys) & held_conan for e in train_quoted)
    assert not any(set(e.side_keys) & train_conan for e in held_quoted)
    straddling = [e for e in loaded["conan_quoted"].examples if example_side(e, 3, 0.15) is None]
    assert straddling and len(train_quoted) + len(held_quoted) + len(straddling) == len(loaded["conan_quoted"].examples)
    e = straddling[0]
    assert {heldout_side(k, 3, 0.15) for k in e.side_keys} == {True, False}


def test_leaving_conan_out_leaves_out_what_is_built_from_it():
    every = list(SOURCES)
    assert "conan_quoted" not in fold_sources(every, "conan") and "conan" not in fold_sources(every, "conan")
    assert "conan_quoted" in fold_sources(every, "dynahate")
    assert "conan_quoted" not in fold_sources(every, None)  # no dataset of its own: no fold of its own
    assert fold_sources(every, None) == [k for k in every if k != "conan_quoted"]


def test_quoted_reader_counts_bad_pairs(tmp_path):
    root = tmp_path / "conan"
    root.mkdir()
    (root / "Multitarget-CONAN.csv").write_text(
        'HATE_SPEECH,COUNTER_NARRATIVE\n"They are vermin.","No, they are our neighbours."\n,"orphan reply"\n'
        f'"{"word " * 40}","{"more " * 10}"\n', encoding="utf-8")
    (root / "DIALOCONAN.csv").write_text(
        "text,TARGET,dialogue_id,turn_id,type\nThey ruin everything.,X,7,0,HS\nThat is simply untrue.,X,7,1,CN\n"
        "Another claim.,X,7,2,HS\n", encoding="utf-8")
    (root / "CONAN.csv").write_text("cn_id,hateSpeech,counterSpeech\nFR1,Ils ...,Non ...\n", encoding="utf-8")
    ex, rep = read_conan_quoted(root)
    assert len(ex) == 2 and rep.skipped == {"missing_text": 1, "too_long_to_quote": 1, "not_english": 1}
    assert any("They are vermin." in e.text and "our neighbours" in e.text for e in ex)
    assert any("They ruin everything." in e.text and "simply untrue" in e.text for e in ex)
    with pytest.raises(ToxicityDataError, match="conan_quoted data: .*CONAN.csv is missing"):
        (root / "CONAN.csv").unlink()
        read_conan_quoted(root)


# --- the functional suite ------------------------------------------------------------------------------------

def test_functional_suite_shape():
    cases = functional.cases()
    assert len(cases) == len({c.text for c in cases}) == 350
    funcs = {c.functionality for c in cases}
    assert {"negated_hate", "counter_speech", "reclaimed_slur", "profanity_not_hate", "implicit_derogation",
            "threat", "identity_benign"} <= funcs
    assert 0.45 < sum(c.label for c in cases) / len(cases) < 0.6
    assert not any("{" in c.text for c in cases)


PROFANITY = re.compile(r"fuck|shit|damn|hell|bloody|nigga|dyke|queer|faggot|trann|retard|kike|wetback|towelhead",
                       re.I)
HATE_WORDS = re.compile(r"disgusting|parasite|animal|disease|bullet|beaten|stupid|sick|ruin|hunt|destroy", re.I)


def test_suite_exposes_a_profanity_filter():
    """A profanity/slur keyword scorer: what the issue found (it flags profanity and reclaimed slurs, misses
    implicit hate and threats). The suite must show exactly that."""
    res = functional.evaluate(lambda texts: [1.0 if PROFANITY.search(t) else 0.0 for t in texts])
    by = res["by_functionality"]
    assert by["profanity_not_hate"]["accuracy"] < 0.2 and by["reclaimed_slur"]["accuracy"] == 0.0
    assert by["implicit_derogation"]["accuracy"] == 0.0 and by["threat"]["accuracy"] == 0.0
    assert res["roc_auc"] < 0.6


def test_suite_exposes_a_hateful_word_filter():
    """Negative words without reading the sentence: it fails negation and counter-speech."""
    res = functional.evaluate(lambda texts: [1.0 if HATE_WORDS.search(t) else 0.0 for t in texts])
    by = res["by_functionality"]
    assert by["negated_hate"]["accuracy"] < 0.3 and by["counter_speech"]["accuracy"] < 0.3
    assert by["identity_benign"]["accuracy"] == 1.0
    assert res["roc_auc"] < 0.75


def test_suite_rewards_a_scorer_that_reads_the_labels():
    gold = {c.text: c.label for c in functional.cases()}
    res = functional.evaluate(lambda texts: [0.9 if gold[t] else 0.1 for t in texts])
    assert res["roc_auc"] == 1.0 and res["accuracy"] == 1.0
    with pytest.raises(ValueError, match="returned 1 scores for 350 cases"):
        functional.evaluate(lambda texts: [0.5])
