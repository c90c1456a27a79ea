"""The audit trail as its users reach it: a reviewer in Debian's Chromium (driven by Selenium
with Debian's chromedriver) signs in, searches, opens an event with its proof and downloads the
results as CSV; and the official MCP Python SDK connects to `/mcp/audit` through the OAuth flow
and calls its search tool."""
import asyncio
import csv
import io
import os
import pathlib
import shutil
import time

import pytest
import requests

from conftest import ADMIN_PASSWORD
from mcp_client import Browser, MemoryStorage, sdk_client, text_of

REDIRECT = "http://127.0.0.1:8767/callback"


def add_user(server, name, role):
    r = requests.post(server.base + "/admin/api/users", auth=("admin", ADMIN_PASSWORD), json={
        "username": name, "password": f"{name}-password-1", "role": role,
        "email": f"{name}@example.com"})
    assert r.status_code == 201, r.text
    return r.json()["user_id"]


def chromium(download_dir):
    chrome = shutil.which("chromium") or "/usr/bin/chromium"
    driver_bin = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not (os.path.exists(chrome) and os.path.exists(driver_bin)):
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but chromium/chromedriver are missing (.ci/run installs them)")
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = chrome
    # The flags this closed network needs (no background connections, no sandbox as root).
    for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={download_dir}/profile"]:
        options.add_argument(flag)
    options.add_experimental_option("prefs", {
        "download.default_directory": str(download_dir),
        "download.prompt_for_download": False,
    })
    return webdriver.Chrome(service=Service(executable_path=driver_bin), options=options)


def test_a_reviewer_searches_opens_an_event_and_downloads_csv_in_chromium(audit_server, tmp_path):
    from selenium.webdriver.common.by import By
    add_user(audit_server, "ann", "auditor")
    add_user(audit_server, "bob", "user")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver = chromium(downloads)
    try:
        driver.get(audit_server.base + "/admin/audit")
        # Not signed in: the sign-in page, which brings the reviewer back.
        assert "/login" in driver.current_url, driver.current_url
        driver.find_element(By.NAME, "username").send_keys("ann")
        driver.find_element(By.NAME, "password").send_keys("ann-password-1")
        driver.find_element(By.CSS_SELECTOR, "form button[type=submit], form input[type=submit]").click()
        # The click returns before the browser has followed the form's answer (the password
        # hash takes a while): wait for the page it leads to, then check it.
        from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait
        try:
            WebDriverWait(driver, 10).until(lambda d: d.current_url.endswith("/admin/audit"))
        except TimeoutException:
            pass
        assert driver.current_url.endswith("/admin/audit"), driver.current_url
        assert "Audit trail" in driver.title

        # A query: bob's account, found by his email (the index follows within a second).
        deadline = time.time() + 10
        while True:
            try:
                box = driver.find_element(By.ID, "q")
                box.clear()
                box.send_keys("kind:user.created user:bob@example.com")
                box.submit()
                # The rows of the page the search leads to, not of the one it was typed on
                # (submit returns before the browser has followed it).
                WebDriverWait(driver, 10).until(lambda d: "q=kind" in d.current_url)
                rows = driver.find_elements(By.CSS_SELECTOR, "#results tbody tr")
            except StaleElementReferenceException:
                # The page was replaced under the lookup (the submitted search arriving).
                rows = []
            if rows or time.time() > deadline:
                break
            time.sleep(0.3)
        assert len(rows) == 1, driver.page_source[:3000]
        assert "bob@example.com" in rows[0].text and "user.created" in rows[0].text

        # Open the event: every field, its hash, and an inclusion proof once a checkpoint
        # covers it (the server checkpoints every second).
        link = rows[0].find_element(By.CSS_SELECTOR, "a")
        seq = link.text
        event_url = link.get_attribute("href")
        deadline = time.time() + 10
        while True:
            driver.get(event_url)
            if driver.find_elements(By.ID, "proof") or time.time() > deadline:
                break
            time.sleep(0.5)
        assert f"Event {seq}" in driver.find_element(By.TAG_NAME, "h1").text
        assert len(driver.find_element(By.ID, "hash").text) == 64
        assert "bob@example.com" in driver.find_element(By.ID, "fields").text
        proof = driver.find_element(By.ID, "proof").text
        assert '"type": "inclusion"' in proof and f'"seq": {seq}' in proof, proof

        # Download the results as CSV, as the browser does.
        driver.back()
        driver.get(audit_server.base + "/admin/audit?q=kind%3Auser.created")
        driver.find_element(By.ID, "csv").click()
        deadline = time.time() + 15
        files = []
        while time.time() < deadline:
            files = [p for p in downloads.glob("*.csv")]
            if files and not list(downloads.glob("*.crdownload")):
                break
            time.sleep(0.2)
        assert files, list(downloads.iterdir())
        rows = list(csv.DictReader(io.StringIO(files[0].read_text())))
        emails = {r["email"] for r in rows}
        assert {"ann@example.com", "bob@example.com"} <= emails, rows
        assert all(r["kind"] == "user.created" for r in rows)
    finally:
        driver.quit()

    # The page's search and download are on the trail, by ann, from the page.
    trail = requests.get(audit_server.base + "/admin/api/audit/export",
                         params={"after": 0, "limit": 1000, "kind": "audit.searched,audit.exported"},
                         auth=("admin", ADMIN_PASSWORD)).text.splitlines()
    import json
    events = [json.loads(l) for l in trail]
    surfaces = {(e["kind"], e["payload"]["surface"]) for e in events}
    assert ("audit.searched", "page") in surfaces and ("audit.exported", "page") in surfaces, surfaces


async def audit_scenario(server, browser, storage, seen):
    url = server.base + "/mcp/audit"
    async with sdk_client(url, browser, storage, "Reviewer's assistant", seen) as client:
        listed = await client.list_tools()
        tools = {t.name: t for t in listed.tools}
        assert set(tools) == {"search_audit", "get_event", "summarize_activity", "follow_family"}
        assert all(t.annotations.read_only_hint for t in tools.values())
        # Its own discovery is on the trail within about a second.
        await asyncio.sleep(1.0)
        found = await client.call_tool("search_audit", {"query": "kind:user.created", "limit": 10})
        assert not found.is_error, found
        results = found.structured_content["results"]
        assert {r["user_name"] for r in results} >= {"admin", "ann"}, results
        one = await client.call_tool("get_event", {"seq": results[-1]["seq"]})
        assert not one.is_error and one.structured_content["hash"] == results[-1]["hash"]
        bad = await client.call_tool("search_audit", {"query": "kind:user.created (oops"})
        assert bad.is_error and "column" in text_of(bad)
    return storage


def test_the_mcp_sdk_searches_the_audit_trail_through_the_oauth_flow(audit_server):
    add_user(audit_server, "ann", "auditor")
    browser = Browser(audit_server.base, REDIRECT)
    storage = MemoryStorage()
    seen = []
    asyncio.run(audit_scenario(audit_server, browser, storage, seen))
    assert ("POST", "/oauth/register", 201) in [(m, p, s) for (m, p, s, _) in seen]
    assert browser.last_scope() >= {"audit:read"}
    # The assistant's calls are recorded as tool calls (searchable within about a second).
    deadline = time.time() + 10
    while True:
        r = requests.get(audit_server.base + "/admin/api/audit/search",
                         params={"q": "kind:tool.called tool:search_audit"},
                         auth=("ann", "ann-password-1"))
        assert r.status_code == 200, r.text
        if len(r.json()["results"]) == 2 or time.time() > deadline:
            break
        time.sleep(0.2)
    assert len(r.json()["results"]) == 2, r.text
