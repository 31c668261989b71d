"""lvmlib.data.corpus: wikitext cleaning, sentence splitting and chunking, every source, bad input."""

import bz2
import gzip
import json
from pathlib import Path

import pytest

from lvmlib.core.config import DataConfig
from lvmlib.core.errors import CorpusError, DataError, LeakageError
from lvmlib.data import corpus
from lvmlib.data.corpus import Article

WIKITEXT = """{{Infobox person|name=Ada|birth_date=1815}}
'''Ada Lovelace''' was an English [[mathematician]] and [[Writer|writer]].<ref>{{cite book|title=Ada}}</ref>
She worked on [[Charles Babbage]]'s proposed [[Analytical Engine|engine]].<ref name="x"/>
[[File:Ada.jpg|thumb|A portrait of Ada.]]

== Early life ==
Her father was [[Lord Byron]] &amp; her mother was Anne.<!-- a comment -->
{| class="wikitable"
|-
| cell one || cell two
|}
* First list item about her notes
* Second list item about the engine

== References ==
* Some citation, 1999.

== External links ==
* [http://example.org An external site]
[[Category:Mathematicians]]
"""


def test_wikitext_to_paragraphs_keeps_prose_and_drops_markup():
    paras = corpus.wikitext_to_paragraphs(WIKITEXT)
    text = "\n".join(paras)
    assert paras[0] == (
        "Ada Lovelace was an English mathematician and writer. She worked on Charles Babbage's proposed engine."
    )
    assert "Her father was Lord Byron & her mother was Anne." in paras
    # list items survive, each a paragraph of its own
    assert "First list item about her notes" in paras and "Second list item about the engine" in paras
    for junk in (
        "Infobox",
        "cite",
        "portrait",
        "thumb",
        "cell one",
        "comment",
        "Category",
        "citation",
        "external site",
        "Early life",
        "References",
        "{{",
        "[[",
        "<ref",
    ):
        assert junk not in text, junk


def test_real_sentence_splitter_handles_abbreviations():
    sents = corpus.split_sentences(
        "Dr. Smith met Mr. Jones in Washington, D.C. on Monday. They talked "
        "until 5 p.m. about the U.S. economy. Then they left."
    )
    assert sents == [
        "Dr. Smith met Mr. Jones in Washington, D.C. on Monday.",
        "They talked until 5 p.m. about the U.S. economy.",
        "Then they left.",
    ]


def _w(n, tag="w"):
    return " ".join(f"{tag}{i}" for i in range(n)) + "."


def test_group_sentences_bounds_and_order():
    sents = [_w(4, "a"), _w(3, "b"), _w(12, "c"), _w(2, "d"), _w(30, "e"), _w(5, "f"), _w(2, "g")]
    chunks = corpus.group_sentences(sents, min_words=10, max_words=20)
    # order and content preserved exactly (no overlap)
    assert " ".join(chunks) == " ".join(sents)
    words = [len(c.split()) for c in chunks]
    # a chunk ends when it reaches min_words; a sentence longer than max_words stands alone;
    # a short chunk only happens when the next sentence would overflow max_words
    assert chunks == [" ".join(sents[0:3]), sents[3], sents[4], " ".join(sents[5:7])]
    assert words == [19, 2, 30, 7]


def test_group_sentences_short_tail_joins_previous():
    sents = [_w(10, "a"), _w(10, "b"), _w(3, "c")]
    assert corpus.group_sentences(sents, 10, 500) == [sents[0], sents[1] + " " + sents[2]]
    assert corpus.group_sentences([_w(3)], 10, 500) == [_w(3)]  # a whole short article is one chunk
    assert corpus.group_sentences([], 10, 500) == []


def test_group_sentences_overlap_repeats_last_sentence():
    sents = [_w(6, "a"), _w(6, "b"), _w(6, "c"), _w(6, "d")]
    chunks = corpus.group_sentences(sents, 10, 500, overlap=True)
    assert chunks == [f"{sents[0]} {sents[1]}", f"{sents[1]} {sents[2]}", f"{sents[2]} {sents[3]}"]


def test_chunk_article_paragraph_mode():
    cfg = DataConfig(chunking="paragraphs", min_words=3)
    art = Article("t", ["one two three four.", "five six.", "seven eight nine."])
    assert corpus.chunk_article(art, cfg) == ["one two three four.", "five six. seven eight nine."]


# --------------------------------------------------------------------------- sources
def _write_jsonl(path: Path, records, gz=False):
    lines = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(lines)
    else:
        path.write_text(lines)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_jsonl_both_record_shapes(tmp_path, gz):
    p = _write_jsonl(
        tmp_path / ("c.jsonl.gz" if gz else "c.jsonl"),
        [
            {"title": "A", "paragraphs": ["p one.", "p  two."]},
            "",
            {"title": "B", "text": "first para.\n\nsecond\npara."},
        ],
        gz=gz,
    )
    arts = list(corpus.iter_articles(DataConfig(source="jsonl", path=str(p))))
    assert [a.title for a in arts] == ["A", "B"]
    assert arts[0].paragraphs == ["p one.", "p two."]
    assert arts[1].paragraphs == ["first para.", "second para."]


def test_jsonl_malformed_line_names_file_and_line(tmp_path):
    p = _write_jsonl(
        tmp_path / "bad.jsonl",
        [{"title": "A", "text": "ok."}, {"title": "B", "text": "ok."}, '{"title": "C", "text": '],
    )
    with pytest.raises(CorpusError, match=r"bad\.jsonl:3: malformed JSON"):
        list(corpus.iter_articles(DataConfig(source="jsonl", path=str(p))))
    p2 = _write_jsonl(tmp_path / "nokey.jsonl", [{"title": "A", "body": "x"}])
    with pytest.raises(CorpusError, match=r"nokey\.jsonl:1: needs key 'paragraphs' or 'text'"):
        list(corpus.iter_articles(DataConfig(source="jsonl", path=str(p2))))


def test_truncated_gzip_is_a_clear_error(tmp_path):
    p = _write_jsonl(tmp_path / "c.jsonl.gz", [{"title": f"A{i}", "text": "word " * 200} for i in range(50)], gz=True)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorpusError, match=r"c\.jsonl\.gz: unreadable or truncated"):
        list(corpus.iter_articles(DataConfig(source="jsonl", path=str(p))))


@pytest.mark.parametrize("source", ["jsonl", "mediawiki_dump", "vectors"])
def test_missing_path_names_it(tmp_path, source):
    with pytest.raises(CorpusError, match=r"nope\.\w+: corpus file not found"):
        corpus.source_file(DataConfig(source=source, path=str(tmp_path / "nope.xyz")))
    with pytest.raises(CorpusError, match="data.path is empty"):
        corpus.source_file(DataConfig(source=source, path=""))


REDIRECT = '<redirect title="X" />'


def _dump(pages):
    body = "".join(
        f"<page><title>{t}</title><ns>{ns}</ns><id>{i}</id>{REDIRECT if red else ''}"
        f'<revision><id>1</id><text xml:space="preserve">{txt}</text></revision></page>\n'
        for i, (t, ns, red, txt) in enumerate(pages)
    )
    return (
        '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10">\n'
        f"<siteinfo><sitename>W</sitename></siteinfo>\n{body}</mediawiki>\n"
    )


PAGES = [
    ("Alpha", 0, False, "'''Alpha''' is the first letter. It is old."),
    ("Redirect page", 0, True, "#REDIRECT [[Alpha]]"),
    ("Wikipedia:About", 4, False, "Project page text here."),
    ("Beta", 0, False, "Beta is the second letter.&lt;ref&gt;cite&lt;/ref&gt; It follows alpha."),
]


@pytest.mark.parametrize("bz", [False, True])
def test_mediawiki_dump_main_namespace_no_redirects(tmp_path, bz):
    xml = _dump(PAGES).encode()
    p = tmp_path / ("d.xml.bz2" if bz else "d.xml")
    p.write_bytes(bz2.compress(xml) if bz else xml)
    arts = list(corpus.iter_articles(DataConfig(source="mediawiki_dump", path=str(p))))
    assert [a.title for a in arts] == ["Alpha", "Beta"]
    assert arts[1].paragraphs == ["Beta is the second letter. It follows alpha."]
    capped = list(corpus.iter_articles(DataConfig(source="mediawiki_dump", path=str(p), max_articles=1)))
    assert [a.title for a in capped] == ["Alpha"]


def test_truncated_or_malformed_dump_is_a_clear_error(tmp_path):
    xml = _dump(PAGES * 30).encode()
    cut = tmp_path / "cut.xml.bz2"
    cut.write_bytes(bz2.compress(xml)[:-200])
    with pytest.raises(CorpusError, match=r"cut\.xml\.bz2: unreadable or truncated dump"):
        list(corpus.iter_articles(DataConfig(source="mediawiki_dump", path=str(cut))))
    bad = tmp_path / "bad.xml"
    bad.write_bytes(xml[: len(xml) // 2])  # plain XML cut mid-stream
    with pytest.raises(CorpusError, match=r"bad\.xml:\d+: malformed or truncated XML"):
        list(corpus.iter_articles(DataConfig(source="mediawiki_dump", path=str(bad))))
    garbage = tmp_path / "garbage.xml.bz2"
    garbage.write_bytes(b"this is not bzip2 at all")
    with pytest.raises(CorpusError, match="garbage.xml.bz2: unreadable"):
        list(corpus.iter_articles(DataConfig(source="mediawiki_dump", path=str(garbage))))


def test_hf_dataset_without_datasets_is_a_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_datasets(name, *a, **k):
        if name == "datasets":
            raise ImportError("No module named 'datasets'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(CorpusError, match=r"pip install 'lvmlib\[hf\]'"):
        list(corpus.iter_articles(DataConfig(source="hf_dataset")))


def test_corpus_errors_are_data_errors():
    assert issubclass(CorpusError, DataError) and issubclass(DataError, ValueError)
    assert issubclass(LeakageError, DataError)


def test_gensim_sample_is_found_without_importing_gensim():
    import sys

    before = "gensim" in sys.modules
    arts = list(corpus.iter_mediawiki(corpus.gensim_sample_path()))
    assert len(arts) == 106 and arts[0].title == "Anarchism"
    assert all(a.paragraphs for a in arts)
    assert ("gensim" in sys.modules) == before


# --------------------------------------------------------------------------- chunk cache
def test_chunk_cache_replays_and_never_keeps_a_partial_entry(tmp_path, monkeypatch):
    p = _write_jsonl(
        tmp_path / "c.jsonl", [{"title": f"T{i}", "text": f"Sentence one of {i} here. Two."} for i in range(5)]
    )
    cfg = DataConfig(source="jsonl", path=str(p), min_words=2)
    gen = corpus.iter_chunked_cached(cfg, tmp_path / "cache")
    next(gen)
    gen.close()  # interrupted after one article
    assert not list((tmp_path / "cache" / "chunks").glob("*.jsonl"))
    first = list(corpus.iter_chunked_cached(cfg, tmp_path / "cache"))
    assert len(list((tmp_path / "cache" / "chunks").glob("*.jsonl"))) == 1

    def boom(_cfg, _stats=None):
        raise AssertionError("should replay from the cache")

    monkeypatch.setattr(corpus, "iter_chunked", boom)
    assert list(corpus.iter_chunked_cached(cfg, tmp_path / "cache")) == first
    # a change of chunking parameters or of the file is a different key
    assert corpus.chunk_cache_key(cfg) != corpus.chunk_cache_key(DataConfig(source="jsonl", path=str(p), min_words=3))
    p.write_text(p.read_text() + json.dumps({"title": "new", "text": "More text here."}) + "\n")
    with pytest.raises(AssertionError, match="replay"):
        list(corpus.iter_chunked_cached(cfg, tmp_path / "cache"))


@pytest.mark.slow
def test_default_corpus_chunk_count_near_the_reference():
    """Reference (brief): 18,324 chunks at >= 10 words on gensim's sample; we keep list items and drop
    the reference sections (See also, References, ...) — see docs/data.md for the difference."""
    n = sum(len(c) for _, c in corpus.iter_chunked(DataConfig()))
    assert 17_500 <= n <= 19_500, n


def test_parallel_chunking_equals_one_process(tmp_path):
    """data.chunk_workers > 1 splits sentences in a process pool: same chunks, same order, same
    over-long-paragraph counts as one process; a malformed line still fails naming it."""
    long_para = " ".join(f"Sentence number {i} of the long paragraph is here." for i in range(700))  # > 5,000 chars
    recs = [
        {
            "title": f"T{i}",
            "paragraphs": [
                f"Dr. Smith met Mr. Jones {i} times. They talked about it at length.",
                "Short. " * (i % 4) + "A closing sentence with enough words here.",
                *([long_para] if i % 7 == 0 else []),
            ],
        }
        for i in range(30)
    ]
    p = _write_jsonl(tmp_path / "c.jsonl", recs)
    runs = {}
    for w in (1, 3):
        st = corpus.ChunkStats()
        runs[w] = (
            list(corpus.iter_chunked(DataConfig(source="jsonl", path=str(p), min_words=5, chunk_workers=w), st)),
            st.long_paragraphs,
            st.long_paragraph_chars,
        )
    assert runs[3] == runs[1]
    assert runs[1][1] == 5 and len(runs[1][0]) == 30
    p.write_text(p.read_text() + "{not json\n")
    with pytest.raises(CorpusError, match="c.jsonl.*31"):
        list(corpus.iter_chunked(DataConfig(source="jsonl", path=str(p), min_words=5, chunk_workers=2)))
