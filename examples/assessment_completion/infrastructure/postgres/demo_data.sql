INSERT INTO campaign_participations VALUES (10, 100, 7, 'Started'), (11, 100, 8, 'Started');
INSERT INTO certification_courses VALUES (20, 7, NULL);
INSERT INTO assessments VALUES
    (1, 7, 'Campaign', 'Started', 10, NULL, 1),
    (2, 7, 'Certification', 'Started', NULL, 20, 1),
    (3, 7, 'Campaign', 'Aborted', 10, NULL, 1),
    (4, 8, 'Campaign', 'Started', 11, NULL, 1);
INSERT INTO answers VALUES
    (1, '1.1', '1', TRUE), (1, '1.2', '1', TRUE), (1, '2.1', '2', TRUE), (1, '2.1', '2', FALSE),
    (2, '1.1', '1', TRUE), (2, '1.1', '1', TRUE), (2, '1.2', '1', TRUE), (2, '2.1', '2', TRUE),
    (2, '2.1', '2', TRUE), (2, '3.1', '3', TRUE), (2, '3.1', '3', TRUE), (2, '3.2', '3', FALSE),
    (4, '1.1', '1', TRUE), (4, '1.1', '1', FALSE);
INSERT INTO badges VALUES (1, 100, 'BRONZE', 50), (2, 100, 'GOLD', 90);
