"""Fixtures shared by the whole test suite: offline mode and a tiny random Llama model."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from lang1ops.tasks import DEFAULT_CONTRACT

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
# One pytest process starts and stops several local Ray clusters, which no service process does.
# A GCS client of Ray's that outlives its cluster in this process (Ray keeps some in module state)
# ends the whole process with status 1, mid-line and without a summary, once it has failed to
# reach the stopped GCS for this many seconds (default 60): CI lost two runs that way, each in a
# module after a Ray one. Read by Ray's C++ config when `ray` is first imported.
RAY_TEST_ENV = {"RAY_gcs_rpc_server_reconnect_timeout_s": str(24 * 3600)}
# Modules that start a Ray cluster (in this process or a child): run last, so that whatever Ray
# leaves behind cannot take modules after them down with it.
RAY_CLUSTER_MODULES = ("test_prometheus_scrape.py", "test_batch_score.py", "test_serve_app.py",
                       "test_ray_exposure.py", "test_distributed.py")


def pytest_configure(config: pytest.Config) -> None:
    # huggingface_hub reads HF_HUB_OFFLINE once, when first imported; this hook runs before
    # test modules are collected (and import transformers), which a fixture would be too late for.
    os.environ.update(OFFLINE_ENV)
    for name, value in RAY_TEST_ENV.items():
        os.environ.setdefault(name, value)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name in RAY_CLUSTER_MODULES)  # stable: order kept within each group


BOS, EOS, PAD = "<s>", "</s>", "<pad>"
TINY_VOCAB = 1200

_CLINICAL_SENTENCES = [
    "Patient is a 67-year-old man admitted with community acquired pneumonia.",
    "History of hypertension, type 2 diabetes mellitus and chronic kidney disease stage 3.",
    "She presents with chest pain radiating to the left arm and diaphoresis.",
    "Vital signs: blood pressure 142/88, heart rate 96, temperature 38.4 C, oxygen saturation 91% on room air.",
    "Labs notable for creatinine 1.8, white blood cell count 14.2 and lactate 2.6.",
    "Chest x-ray shows right lower lobe consolidation without effusion.",
    "Started on ceftriaxone and azithromycin, admitted to the medicine floor.",
    "Discharged home in stable condition with follow up in cardiology clinic in two weeks.",
    "Hospital course complicated by atrial fibrillation with rapid ventricular response.",
    "Plan: continue metoprolol, apixaban, furosemide 40 mg daily, daily weights.",
    "Assessment: acute on chronic heart failure exacerbation, NYHA class III.",
    "No known drug allergies. Lives alone, former smoker, drinks alcohol socially.",
    "Physical exam: bibasilar crackles, 2+ pitting edema to the knees, jugular venous distension.",
    "The patient was transferred to the intensive care unit for septic shock requiring pressors.",
    "Echocardiogram demonstrated an ejection fraction of 25% with severe mitral regurgitation.",
    "CT of the abdomen and pelvis revealed acute uncomplicated appendicitis.",
    "Hemoglobin dropped from 11.2 to 7.9, transfused two units of packed red blood cells.",
    "Insurance authorization was requested for inpatient admission; observation status was considered.",
    "Past surgical history: cholecystectomy, right total knee arthroplasty, coronary artery bypass grafting.",
    "Neurology was consulted for new left sided weakness and slurred speech; MRI brain ordered.",
    "Glucose 412 with anion gap 24 and positive serum ketones, consistent with diabetic ketoacidosis.",
    "Patient with metastatic pancreatic adenocarcinoma, goals of care discussed with family, now DNR/DNI.",
    "Blood cultures grew methicillin resistant Staphylococcus aureus; vancomycin was started.",
    "Urinalysis positive for leukocyte esterase and nitrites, urine culture pending.",
    "Social work arranged skilled nursing facility placement and home oxygen.",
    "Medications on discharge: lisinopril 10 mg, atorvastatin 80 mg, aspirin 81 mg, insulin glargine.",
    "Chronic obstructive pulmonary disease exacerbation treated with prednisone and nebulized albuterol.",
    "Length of stay was prolonged by delirium, deconditioning and a fall on hospital day four.",
    "Charlson comorbidity index includes myocardial infarction, dementia, liver disease and lymphoma.",
    "Readmitted within thirty days for recurrent gastrointestinal bleeding from a duodenal ulcer.",
]


def _training_corpus() -> list[str]:
    """Clinical sentences plus every task's prompt suffix, so the tiny vocabulary covers both;
    the "Answer: X" lines make each answer token (" A" ... " E") a single merged token."""
    suffixes = [DEFAULT_CONTRACT.question_suffix(task) for task in DEFAULT_CONTRACT.tasks]
    answers = [f"Answer: {letter}" for letter in "ABCDE"]
    return (_CLINICAL_SENTENCES + suffixes + answers) * 20


def build_tiny_tokenizer(add_bos: bool = True) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on the built-in corpus; Llama-like BOS if `add_bos`."""
    from transformers import PreTrainedTokenizerFast  # imported late: see pytest_configure

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_training_corpus(), trainer=trainer)
    if add_bos:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, backend.token_to_id(BOS))]
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD, model_max_length=2048
    )
    for letter in "ABCDE":
        ids = tokenizer(f" {letter}", add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, f"tiny tokenizer splits ' {letter}' into {ids}"
    return tokenizer


@pytest.fixture(scope="session", autouse=True)
def hf_offline() -> None:
    """No test may reach a model hub (the variables are already set by pytest_configure)."""
    os.environ.update(OFFLINE_ENV)
    import huggingface_hub

    assert huggingface_hub.is_offline_mode(), "huggingface_hub was imported before offline mode was set"


@pytest.fixture(scope="module", autouse=True)
def no_ray_left_behind(request: pytest.FixtureRequest):
    """A module that starts Ray in the test process must stop it: a driver still connected when a
    later module's own Ray cluster starts and stops has taken the whole pytest process down with
    it (Ray's core worker exits the process when it loses its GCS)."""
    yield
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        from ray import serve

        serve.shutdown()
        ray.shutdown()
        pytest.fail(f"{request.module.__name__} left Ray running in the test process", pytrace=False)


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_llama_dir: Path):
    """Settings of one test: home, registry and encoding cache under tmp_path, the tiny Llama as
    base, 64-token notes. Yields tmp_path."""
    from lang1ops.settings import get_settings

    monkeypatch.setenv("LANG1OPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LANG1OPS_REGISTRY_DIR", str(tmp_path / "registry"))
    monkeypatch.setenv("LANG1OPS_ENCODING_CACHE", str(tmp_path / "cache.sqlite"))
    monkeypatch.setenv("LANG1OPS_MODEL__BASE_MODEL_DIR", str(tiny_llama_dir))
    monkeypatch.setenv("LANG1OPS_MODEL__MAX_NOTE_TOKENS", "64")
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def make_tiny_tokenizer() -> Callable[..., PreTrainedTokenizerFast]:
    return build_tiny_tokenizer


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama (2 layers, hidden 64, untied embeddings) saved as a local model directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    model_dir = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)
    return model_dir


@pytest.fixture(scope="session")
def small_hospital(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic hospital (about 600 stays) as a FHIR Bulk Data export, shift from 2024."""
    from datetime import date

    from lang1ops.synthetic import HospitalSpec, generate_hospital

    out = tmp_path_factory.mktemp("small_hospital") / "fhir"
    generate_hospital(HospitalSpec(name="Small General", patients=250, seed=21, shift_from=date(2024, 1, 1)), out)
    return out


@pytest.fixture(scope="session")
def small_dataset(small_hospital: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`small_hospital` labeled and split: train/val/test 2019-2022, temporal_2023, temporal_2024."""
    from training.dataset import DatasetSpec, Window, build_dataset

    out = tmp_path_factory.mktemp("small_dataset") / "dataset"
    spec = DatasetSpec(Window.parse("2019-01-01:2022-12-31", "train"),
                       [Window.parse("2023-01-01:2023-12-31"), Window.parse("2024-01-01:2024-12-31")])
    build_dataset(small_hospital, out, spec)
    return out
