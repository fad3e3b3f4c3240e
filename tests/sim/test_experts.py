"""Scripted experts: >= 95% success over 20 seeds per task (and closer to the goal by Task.goal_distance), chunks
shaped and bounded like a policy's."""
import numpy as np
import pytest

from sim import robot
from sim.env import FrankaSimEnv
from sim.experts import ReachExpert, grasp_yaw, make_expert, push_yaw
from sim.rollout import CHUNK_LEN, run_episode

SEEDS = range(20)


@pytest.mark.parametrize("task", ["reach", "push", "pick"])
def test_expert_success_rate(task):
    with FrankaSimEnv(task=task, seed=0, cameras=()) as env:
        expert = make_expert(env)
        chunks_checked = False
        successes = 0
        for seed in SEEDS:  # no rendering: the experts read the scene, not images
            env.reset(seed)
            start_distance = env.goal_distance()
            episode = run_episode(env, expert, seed)
            successes += episode.success
            if episode.success:  # the progress measure agrees: the expert got much closer to the goal
                assert env.goal_distance() < 0.5 * start_distance
            assert not episode.rejected, episode.rejected
            assert episode.control_steps <= env.max_steps
            if not chunks_checked:
                for chunk in episode.chunks:
                    assert chunk.shape == (CHUNK_LEN, 8)
                    assert np.all(chunk[:, :7] >= robot.ARM_LOWER) and np.all(chunk[:, :7] <= robot.ARM_UPPER)
                    assert np.all((chunk[:, 7] >= 0) & (chunk[:, 7] <= 1))
                chunks_checked = True
        expert.close()
    assert successes >= 0.95 * len(SEEDS), f"{task}: {successes}/{len(SEEDS)}"


def test_reach_looks_approaches_and_descends_within_the_horizon():
    with FrankaSimEnv(task="reach", seed=0, cameras=()) as env:
        expert = make_expert(env)
        obs = env.reset(0)
        expert.reset(obs.instruction)
        target = env.task.pose(env.client, "target")[0]
        ends = []
        for _ in range(3):
            env.execute_chunk(expert.act(obs))
            obs = env.observe(render=False)
            ends.append(env.tcp_position())
        expert.close()
        assert env.success()
    np.testing.assert_allclose(ends[0], ReachExpert.LOOKOUT, atol=0.01)
    np.testing.assert_allclose(ends[1], target + [0, 0, ReachExpert.APPROACH_Z], atol=0.01)
    np.testing.assert_allclose(ends[2], target + [0, 0, ReachExpert.REACH_Z], atol=0.01)
    assert 3 * CHUNK_LEN <= env.max_steps


def test_reach_expert_misses_on_purpose_then_corrects():
    misses = []
    with FrankaSimEnv(task="reach", seed=0, cameras=()) as env:
        expert = make_expert(env, miss_m=0.06)
        for seed in range(6):
            obs = env.reset(seed)
            expert.reset(obs.instruction)
            for chunk in range(3):
                env.execute_chunk(expert.act(obs))
                obs = env.observe(render=False)
                if chunk == 1:
                    misses.append(np.linalg.norm((env.tcp_position() - env.task.pose(env.client, "target")[0])[:2]))
            assert env.success(), seed
        first, _, again = (run_episode(env, expert, seed) for seed in (3, 4, 3))  # the miss: a function of the scene
        np.testing.assert_array_equal(again.actions, first.actions)
        expert.close()
    assert max(misses) <= 0.06 + 0.01 and np.mean(misses) > 0.02, misses
    with FrankaSimEnv(task="pick", seed=0, cameras=()) as env, pytest.raises(ValueError, match="only the reach"):
        make_expert(env, miss_m=0.05)


def test_hand_yaw_helpers():
    for yaw in np.linspace(-np.pi, np.pi, 37):
        g = grasp_yaw(yaw)
        assert 0 <= g < np.pi / 2 and np.isclose(np.sin(4 * (g - yaw)), 0, atol=1e-9)  # yaw + k pi/2
        p = push_yaw(np.array([np.cos(yaw), np.sin(yaw)]))
        assert -np.pi / 4 <= p < 3 * np.pi / 4 and np.isclose(np.sin(p - yaw), 0, atol=1e-9)  # yaw + k pi


def test_expert_episodes_are_deterministic():
    with FrankaSimEnv(task="pick", seed=0, cameras=()) as env:
        expert = make_expert(env)
        first = run_episode(env, expert, seed=9)
        run_episode(env, expert, seed=10)  # another episode in between must not matter
        again = run_episode(env, expert, seed=9)
        final = env.observe(render=False).joint_positions
    with FrankaSimEnv(task="pick", seed=0, cameras=()) as other:
        fresh = run_episode(other, make_expert(other), seed=9)
        np.testing.assert_array_equal(other.observe(render=False).joint_positions, final)
    for episode in (again, fresh):
        assert episode.success == first.success and episode.control_steps == first.control_steps
        np.testing.assert_array_equal(episode.actions, first.actions)
