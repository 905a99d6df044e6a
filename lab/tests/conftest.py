"""Lab test fixtures: one toy reproduction of the small model, shared by the tests that read it."""

from __future__ import annotations

import pytest

TOY_PLAN_SIZES = dict(num_videos=6, num_images=4, vae_steps=2, image_steps=2, joint_steps=3, anneal_steps=2,
                      prior_steps=2, prior_videos=3, video_batch=2, image_batch=2, text_pretrain_steps=3,
                      repa_teacher_steps=2, tread=True, polish_steps=2)  # fmt: skip


@pytest.fixture(scope="session")
def toy_reproduction(tmp_path_factory):
    """One small-model reproduction at toy budgets, shared by the tests that read it: (work folder, shipped copy,
    plan). Tests must not change it."""
    from motif_video_lab.small_model.reproduce import SmallModelPlan, reproduce

    root = tmp_path_factory.mktemp("toy-reproduction")
    plan = SmallModelPlan(**TOY_PLAN_SIZES)
    ship = reproduce(root / "work", plan, ship_to=root / "ship")
    return root / "work", ship, plan
