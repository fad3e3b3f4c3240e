"""sim: a Franka Panda simulation bench that speaks the robot's ROS 2 topics."""
