"""One typed API from hosts or workers, a model and a plan to a serving coordinator."""
