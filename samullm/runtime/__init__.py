"""The runner's parts (the runner itself is `samullm.runner`): device pool, plan application,
engine launches, row sets and prompts, feedback to the planner, several runs planned together,
recovery from a dead runner, stage records, and the API's read views."""
