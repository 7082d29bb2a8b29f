-- Versions of a scenario replaced by an edit (catalog.UpdateScenario,
-- catalog.SetEnabled), each as it stood (the catalogue's JSON form of a
-- scenario) and the instant it stopped being in force: an offline record
-- is charged under the fare and rules in force at its scan, not at its
-- upload (catalog.ScenarioAt).
CREATE TABLE catalog_scenario_history (
    id        TEXT NOT NULL,
    version   BIGINT NOT NULL,
    valid_to  BIGINT NOT NULL,
    scenario  TEXT NOT NULL,
    PRIMARY KEY (id, version)
);
CREATE INDEX catalog_scenario_history_to ON catalog_scenario_history(id, valid_to);
