"""The models: Mamba blocks and the LVM heads, the selective scan, checkpoint files."""
