SELECT name FROM badges ORDER BY name
