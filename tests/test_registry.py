"""Registration of the ``-lora`` models into CompressAI's four registries."""

import compressai.zoo.image
import pytest

import compressai_lora
from compressai_lora.registry import register_models
from compressai_lora.zoo import image_models, model_architectures

HOST_ARCHS = {
    "bmshj2018-factorized",
    "bmshj2018-hyperprior",
    "mbt2018-mean",
    "mbt2018",
    "cheng2020-anchor",
    "cheng2020-attn",
}

#: what each host registry must hold under a ``-lora`` name
SOURCES = {
    "compressai.registry.MODELS": model_architectures,
    "compressai.zoo.image_models": image_models,
    "compressai.zoo.models": image_models,
    "compressai.zoo.image.model_architectures": model_architectures,
}


def test_all_six_host_architectures_are_covered():
    hosts = {cls.host_arch for cls in model_architectures.values()}
    assert hosts == HOST_ARCHS
    assert set(model_architectures) == {f"{h}-lora" for h in HOST_ARCHS}
    assert set(image_models) == set(model_architectures)


def test_each_model_subclasses_its_host(name):
    cls = model_architectures[name]
    assert issubclass(cls, compressai.zoo.image.model_architectures[cls.host_arch])


def test_registered_in_every_host_registry(name, registries):
    assert set(registries) == set(SOURCES)
    for where, registry in registries.items():
        assert name in registry, where
        assert registry[name] is SOURCES[where][name], where


def test_import_registers(name):
    # The package was imported by the test session: the names are there.
    assert compressai_lora.register_models is register_models
    assert compressai.zoo.image_models[name] is image_models[name]


def test_register_is_idempotent(registries):
    before = {where: dict(reg) for where, reg in registries.items()}
    register_models()
    register_models()
    for where, registry in registries.items():
        assert registry.keys() == before[where].keys(), where
        for key, value in registry.items():
            assert value is before[where][key], (where, key)


def test_register_restores_removed_names(registries):
    for registry in registries.values():
        for key in model_architectures:
            registry.pop(key)
    register_models()
    for where, registry in registries.items():
        for key, value in SOURCES[where].items():
            assert registry[key] is value, (where, key)


@pytest.mark.parametrize("where", sorted(SOURCES))
def test_register_refuses_to_overwrite(registries, where):
    for registry in registries.values():
        for key in model_architectures:
            registry.pop(key)
    taken = sorted(model_architectures)[-1]  # the last name of every registry
    squatter = object()
    registries[where][taken] = squatter
    with pytest.raises(RuntimeError, match=f"{where}.*{taken}.*refuses to overwrite"):
        register_models()
    # Nothing registered, the squatter untouched.
    assert registries[where][taken] is squatter
    for other, registry in registries.items():
        expected = {taken} if other == where else set()
        assert set(registry) & set(model_architectures) == expected, other
