"""With no update (adaptation disabled) the codec is the host's, bit for bit."""

import torch


def test_compress_gives_host_strings_plus_empty_update(host_model, lora_model, image):
    with torch.no_grad():
        host_out = host_model.compress(image)
        out = lora_model.compress(image)
    assert out["shape"] == host_out["shape"]
    assert len(out["strings"]) == len(host_out["strings"]) + 1
    assert out["strings"][:-1] == host_out["strings"]
    assert out["strings"][-1] == [b""]  # no update costs no byte
    host_bytes = sum(len(s[0]) for s in host_out["strings"])
    assert sum(len(s[0]) for s in out["strings"]) == host_bytes


def test_decompress_gives_host_x_hat(host_model, lora_model, image):
    with torch.no_grad():
        host_out = host_model.compress(image)
        host_x_hat = host_model.decompress(host_out["strings"], host_out["shape"])
        out = lora_model.compress(image)
        x_hat = lora_model.decompress(out["strings"], out["shape"])["x_hat"]
    assert torch.equal(x_hat, host_x_hat["x_hat"])


def test_no_update_decodes_to_no_open_gate(lora_model, image):
    with torch.no_grad():
        out = lora_model.compress(image)
    assert lora_model.decode_update(out["strings"][-1][0]) == {}


def test_forward_gives_host_output(host_model, lora_model, image):
    with torch.no_grad():
        host_out = host_model(image)
        out = lora_model(image)
    assert torch.equal(out["x_hat"], host_out["x_hat"])
    assert out["likelihoods"].keys() == host_out["likelihoods"].keys()
    for key, value in host_out["likelihoods"].items():
        assert torch.equal(out["likelihoods"][key], value), key
