"""The registry's running side: model events on the models topic, and the follower."""
