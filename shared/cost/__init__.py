"""What the regions cost: measured storage per location, replicated bytes, price files, the monthly model."""
