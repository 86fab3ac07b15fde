"""Tests of the Java operators' build: compiled against PyFlink's Flink jars, reused while unchanged."""

from __future__ import annotations

import shutil
import zipfile

import pytest

from shared import flink

pytestmark = pytest.mark.skipif(shutil.which("javac") is None, reason="needs a JDK (javac)")


def test_jar_reused_while_unchanged(tmp_path):
    jar = flink.build_operator_jar(tmp_path)

    with zipfile.ZipFile(jar) as archive:
        names = set(archive.namelist())
    assert {"onml/flink/MicroBatcher.class", "onml/flink/BatchSplitter.class"} <= names
    modified = jar.stat().st_mtime_ns
    assert flink.build_operator_jar(tmp_path) == jar
    assert jar.stat().st_mtime_ns == modified


def test_changed_source_new_jar(tmp_path, monkeypatch):
    sources = tmp_path / "java"
    shutil.copytree(flink.JAVA_SOURCES, sources)
    monkeypatch.setattr(flink, "JAVA_SOURCES", sources)
    first = flink.build_operator_jar(tmp_path / "build")

    batcher = sources / "onml" / "flink" / "MicroBatcher.java"
    batcher.write_text(batcher.read_text() + "\n// changed\n")

    assert flink.build_operator_jar(tmp_path / "build") != first


def test_compile_error_reported(tmp_path, monkeypatch):
    sources = tmp_path / "java" / "onml" / "flink"
    sources.mkdir(parents=True)
    (sources / "Broken.java").write_text("package onml.flink; class Broken { int x = ; }\n")
    monkeypatch.setattr(flink, "JAVA_SOURCES", tmp_path / "java")

    with pytest.raises(RuntimeError, match="compiling the Java operators failed"):
        flink.build_operator_jar(tmp_path / "build")


def test_missing_javac_names_package(monkeypatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(flink.shutil, "which", lambda name: None)

    with pytest.raises(FileNotFoundError, match="openjdk-17-jdk-headless"):
        flink._find_javac()


def test_concurrent_archive_builds_succeed(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=4) as pool:
        archives = list(pool.map(lambda _: flink.build_job_archive(tmp_path), range(8)))

    assert set(archives) == {tmp_path / "onml-jobs.zip"}
    assert not list(tmp_path.glob("*.partial"))
    with zipfile.ZipFile(archives[0]) as archive:
        assert "inference_job/job.py" in archive.namelist()
