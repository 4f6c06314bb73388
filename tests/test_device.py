"""The forward-pass context (autocast + attention backend order) every training and evaluation step uses."""


def test_the_forward_context_is_reusable_and_nests():
    """The one autocast context of a run is entered for every micro-batch and passed to evaluation, which may
    enter it again inside: leaving the inner `with` must not end the outer one, nor leave autocast on."""
    import torch

    from gpt2pipe.device import autocast

    ctx = autocast(torch.device("cpu"), torch.bfloat16)
    for _ in range(2):
        with ctx:
            with ctx:
                assert torch.is_autocast_enabled("cpu")
            assert torch.is_autocast_enabled("cpu")
        assert not torch.is_autocast_enabled("cpu")
