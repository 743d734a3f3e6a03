"""Length-sorted chunks in the fine-tuning loop (evals/scorers/finetune.py): each random batch runs as a few
chunks of similar length whose gradients add up to the batch's, so a step learns exactly what it learnt as one
padded batch while padding far less."""

from __future__ import annotations

import numpy as np
import pytest

from evals.scorers.finetune import FinetuneSettings, chunks_for, finetune_classifier, length_chunks, token_lengths

SHORT, LONG = "ok", "this is a rather long sentence about nothing in particular at all, said twice over"
TEXTS = [SHORT, LONG, "a medium length sentence", SHORT, LONG, "hi there", "x", "another medium sentence here"] * 4
Y = np.array([[1.0, 0.0] if t == LONG else [0.0, 1.0] for t in TEXTS])
W = np.ones_like(Y)
W[::3, 1] = 0.0                                  # masked cells: the batch's normaliser must count them out


def test_length_chunks_cover_the_batch_in_length_order():
    lengths = [5, 1, 9, 3, 7, 2, 8]
    chunks = length_chunks([0, 1, 2, 3, 4, 5, 6], lengths, 3)
    assert chunks == [[1, 5, 3], [0, 4, 6], [2]]
    assert length_chunks([4, 2], lengths, 1) == [[4, 2]]                 # one chunk: the batch as it came
    assert length_chunks([3], lengths, 4) == [[3]]


def test_token_lengths_count_truncated_pairs_as_the_batch_sees_them(tiny_bert_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    assert token_lengths(tok, ["short", "a much longer text " * 20], 16) == [3, 16]
    one, two = token_lengths(tok, [("a prompt", "a reply"), ("long prompt " * 20, "long reply " * 20)], 24)
    assert one == len(tok("a prompt", "a reply")["input_ids"]) and two == 24


@pytest.fixture(scope="module")
def no_dropout_bert(tmp_path_factory, tiny_bert_dir):
    """The tiny BERT without dropout, so two runs can be compared weight for weight."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert-nodrop")
    cfg = BertConfig.from_pretrained(tiny_bert_dir, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    BertModel.from_pretrained(tiny_bert_dir, config=cfg).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(folder)
    return folder


def test_chunked_steps_learn_what_whole_batches_learn_and_pad_less(no_dropout_bert):
    fits = {}
    for chunks in (1, 4):
        s = FinetuneSettings(epochs=1.0, max_steps=6, batch_size=8, max_length=32, length_chunks=chunks,
                             learning_rate=1e-3, head_learning_rate=1e-3, warmup_fraction=0.0,
                             freeze_embeddings=False)
        fits[chunks] = finetune_classifier(TEXTS, Y, W, s, encoder=str(no_dropout_bert), device="cpu",
                                           labels=["a", "b"], multi_label=True, progress=False)
    whole, chunked = fits[1], fits[4]
    for (name, a), (_, b) in zip(whole.model.state_dict().items(), chunked.model.state_dict().items()):
        assert np.allclose(a.numpy(), b.numpy(), atol=2e-5), name
    assert [c["loss"] for c in whole.stats["loss_curve"]] == pytest.approx(
        [c["loss"] for c in chunked.stats["loss_curve"]], abs=1e-4)
    assert whole.stats["tokens_seen"] == chunked.stats["tokens_seen"]
    assert chunked.stats["tokens_seen"] <= chunked.stats["padded_tokens"] < whole.stats["padded_tokens"]
    assert chunked.stats["length_chunks"] == 4


def test_bad_chunk_count_is_refused_by_name():
    with pytest.raises(ValueError, match="length_chunks must be >= 1"):
        FinetuneSettings(length_chunks=0)


def test_auto_chunks_on_a_cpu_only():
    assert chunks_for(FinetuneSettings(), "cpu") == 8 and chunks_for(FinetuneSettings(), "cuda:0") == 1
    assert chunks_for(FinetuneSettings(length_chunks=2), "cuda") == 2


def test_scoring_in_length_sorted_batches_keeps_each_texts_own_output(tiny_bert_dir):
    from transformers import AutoTokenizer, BertForSequenceClassification

    from evals.scorers.finetune import predict_probs

    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model = BertForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2).eval()
    pairs = [("a prompt", LONG), ("why?", SHORT), ("a much longer prompt than the others", "fine"), ("q", "a")]
    for texts in (TEXTS[:8], pairs):
        batched = predict_probs(model, tok, texts, device="cpu", batch_size=3, max_length=32)
        alone = np.vstack([predict_probs(model, tok, [t], device="cpu", batch_size=1, max_length=32) for t in texts])
        assert batched.shape == (len(texts), 2) and np.allclose(batched, alone, atol=1e-6)
        assert not np.allclose(batched[0], batched[1])            # rows really are different texts, in order
    assert predict_probs(model, tok, [], device="cpu", batch_size=3, max_length=32) is None
