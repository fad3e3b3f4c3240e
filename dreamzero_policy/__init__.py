"""dreamzero_policy: the closed-loop runtime and the ROS 2 node.

Data flow (calls only go downstream; see docs/ARCHITECTURE.md):
observation -> block_buffer -> session -> chunk -> execution -> safety -> controller
"""
