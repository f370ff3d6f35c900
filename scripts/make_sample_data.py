"""Generate the bundled sample data (data/sample/{train,dev,test}.csv) in the competition's CSV format.

Every dialogue comes from a topic scenario: slot values (item, place, time, ...) are drawn from small pools and
written verbatim into the dialogue, and the summary reuses them in a fixed template per topic, plus the sentence
tied to the first optional scenario turn pair present in the dialogue (two for long dialogues). The summary
therefore follows from the dialogue, so even a tiny model can learn it and ROUGE rises with training. Small-talk
filler pairs, tail sentences and the turn-count distribution bring lengths close to the real dev set (mean ~400
chars, 2-29 turns). Output is deterministic given --seed. No text is taken from the real data; --compare
(default: ../shared/data/dev.csv beside the checkout) is only read to print a length comparison, and skipped
when missing.

    python scripts/make_sample_data.py --out data/sample --seed 0
"""

from __future__ import annotations

import argparse
import math
import random
import re
from pathlib import Path
from statistics import NormalDist

import pandas as pd

TIMES = ["오후 3시", "내일 아침 9시", "토요일 오후 2시", "금요일 저녁 7시", "다음 주 월요일 10시", "오늘 저녁 6시 반"]
DATES = ["이번 주 토요일", "다음 주 금요일", "이번 달 말", "내일 저녁", "12월 24일"]
# Each topic: slot pools; the opening pair (always present); optional pairs (#Person1# line, #Person2# line,
# summary sentence or ""); the summary template. "을(를)" etc. are resolved after the slots are filled.
TOPICS: dict[str, dict] = {
    "쇼핑": dict(
        slots=dict(item=["파란색 셔츠", "운동화", "겨울 코트", "가죽 지갑", "청바지", "노트북 가방"],
                   price=["2만 원", "3만 5천 원", "5만 원", "8만 원", "12만 원"], color=["검은색", "흰색", "회색", "빨간색"]),
        open=("실례합니다, {item}을(를) 사려고 하는데 어디에 있나요?", "{item}은(는) 이쪽에 있어요. 이번 주에 할인해서 {price}입니다."),
        extras=[("혹시 {color}도 있나요? 제가 {color}을(를) 좋아해서요.", "네, {color} 제품도 하나 남아 있어요.", "{color} 제품도 남아 있습니다."),
                ("카드로 계산해도 되나요?", "물론이죠. 카드로 계산해 드릴게요.", "#Person1#은 카드로 계산합니다.")],
        summary="#Person1#은 {item}을(를) 사려고 하고, #Person2#는 할인해서 {price}에 판다고 안내합니다."),
    "병원 진료": dict(
        slots=dict(symptom=["두통", "기침", "복통", "허리 통증", "목 통증"], duration=["사흘", "일주일", "이틀", "2주"],
                   med=["진통제", "기침약", "소화제", "파스"]),
        open=("안녕하세요, 어디가 불편해서 오셨어요?", "{duration} 전부터 {symptom}이(가) 심해서 병원에 왔어요."),
        extras=[("{symptom} 말고 다른 증상은 없나요?", "특별히 없는데 밤에 잠을 잘 못 자요.", "#Person2#는 밤에 잠을 잘 못 잔다고 합니다."),
                ("일단 {med}을(를) 처방해 드릴게요. 하루 세 번 드세요.", "네, {med}을(를) 하루 세 번 먹을게요.", "의사는 {med}을(를) 처방해 줍니다.")],
        summary="#Person2#는 {duration} 전부터 {symptom}이(가) 심해서 병원에 왔고, 의사가 증상을 확인합니다."),
    "여행 계획": dict(casual=True,
        slots=dict(dest=["제주도", "부산", "강릉", "경주", "오사카", "방콕"], period=["2박 3일", "3박 4일", "일주일"],
                   month=["다음 달", "여름 방학", "추석 연휴", "12월"], transport=["기차", "비행기", "버스", "자동차"]),
        open=("우리 {month}에 {dest}으로(로) 여행 가자.", "좋아! {dest}에서 {period} 정도 있으면 좋겠다."),
        extras=[("{dest}까지는 {transport}을(를) 타고 가자.", "그래, {transport}이(가) 제일 편할 것 같아.", "{transport}을(를) 타고 가기로 합니다."),
                ("숙소는 내가 예약할게.", "고마워, 그럼 나는 맛집을 찾아볼게.", "#Person1#은 숙소를 예약하고 #Person2#는 맛집을 찾아보기로 합니다.")],
        summary="#Person1#은 {month}에 {dest}으로(로) 여행 가자고 제안하고, 두 사람은 {period} 정도 있기로 합니다."),
    "식당 예약": dict(
        slots=dict(restaurant=["이탈리안 레스토랑", "한식당", "초밥집", "중식당"], time=TIMES, people=["두 명", "세 명", "네 명", "여섯 명"],
                   seat=["창가 자리", "룸", "테라스 자리", "조용한 자리"]),
        open=("거기 {restaurant} 맞나요? {time}에 {people} 예약하고 싶어요.", "네, {time}에 {people} 예약 가능합니다. 성함이 어떻게 되세요?"),
        extras=[("혹시 {seat}으로(로) 해 주실 수 있나요?", "네, {seat}으로(로) 준비해 두겠습니다.", "#Person2#는 {seat}을(를) 준비해 두기로 합니다."),
                ("주차도 가능한가요?", "네, 건물 지하에 주차하실 수 있어요.", "")],
        summary="#Person1#은 {restaurant}에 전화해서 {time}에 {people} 예약을 합니다."),
    "이사": dict(casual=True,
        slots=dict(place=["서울", "대전", "회사 근처", "학교 근처", "신도시"], date=DATES,
                   reason=["출퇴근 시간이 너무 길어서", "월세가 너무 올라서", "집이 너무 좁아서", "새 직장 때문에"]),
        open=("나 {reason} {date}에 {place}으로(로) 이사 가기로 했어.", "그렇구나. {place}으로(로) 가면 훨씬 편하겠다."),
        extras=[("이삿짐 싸는 것 좀 도와줄 수 있어?", "당연하지, {date}에 일찍 갈게.", "#Person2#는 이삿짐 싸는 것을 도와주기로 합니다."),
                ("이사 업체는 인터넷으로 저렴한 곳을 찾았어.", "잘됐다. 요즘 이사 비용이 많이 비싸잖아.", "#Person1#은 인터넷으로 저렴한 이사 업체를 찾았습니다.")],
        summary="#Person1#은 {reason} {date}에 {place}으로(로) 이사 가기로 했다고 #Person2#에게 말합니다."),
    "취업 면접": dict(
        slots=dict(position=["마케팅", "영업", "회계", "디자인", "소프트웨어 개발"], company=["무역 회사", "광고 회사", "은행", "출판사"],
                   years=["2년", "3년", "5년", "7년"], strength=["꼼꼼함", "책임감", "의사소통 능력", "리더십"]),
        open=("안녕하세요. 저희 회사 {position} 직무에 지원하신 이유가 무엇인가요?", "저는 {company}에서 {years} 동안 {position} 업무를 했고, 그 경험을 살리고 싶습니다."),
        extras=[("본인의 가장 큰 장점은 무엇이라고 생각하세요?", "제 장점은 {strength}입니다. 팀에서도 그런 평가를 받았어요.", "#Person2#의 장점은 {strength}입니다."),
                ("언제부터 출근할 수 있나요?", "다음 달 1일부터 바로 출근할 수 있습니다.", "다음 달 1일부터 출근할 수 있습니다.")],
        summary="#Person2#는 {position} 직무 면접에서 {company}에서 {years} 동안 일한 경험을 말합니다."),
    "운동 계획": dict(casual=True,
        slots=dict(name=["민수", "지영", "Jimmy", "수진", "태호"], place=["헬스장", "공원", "수영장", "체육관"], time=TIMES,
                   action=["달리기", "수영", "농구", "요가", "배드민턴"]),
        open=("{name} 씨, {time}에 {place}에서 같이 {action}하자.", "좋아, {time}에 {place}에서 보자."),
        extras=[("요즘 살이 쪄서 운동을 꾸준히 하고 싶어.", "나도야. 일주일에 세 번은 하자.", "일주일에 세 번 운동하기로 합니다."),
                ("운동 끝나고 같이 저녁 먹을래?", "좋지, 근처에 맛있는 국숫집이 있어.", "#Person1#은 운동 끝나고 저녁을 먹자고 합니다.")],
        summary="#Person1#은 #Person2#에게 {place}에서 {time}에 {action}하자고 제안하고, #Person2#는 동의합니다."),
    "전화번호": dict(casual=True,
        slots=dict(reason=["다음 모임 일정을 알려 주려고", "프로젝트 자료를 보내 주려고", "주말에 같이 밥 먹으려고"]),
        open=("{reason} 그러는데, 전화번호 좀 알려 줄 수 있어?", "그래, 내 전화번호는 #PhoneNumber#야."),
        extras=[("고마워. 저장해 둘게. 문자도 이 번호로 하면 돼?", "응, 같은 번호야. 편하게 연락해.", ""),
                ("내 번호도 알려 줄게. 내 번호는 #PhoneNumber#이야.", "알았어, 바로 저장할게.", "#Person1#도 번호를 알려줍니다.")],
        summary="#Person1#은 {reason} 전화번호를 묻고, #Person2#는 전화번호 #PhoneNumber#를 알려줍니다."),
    "계좌 개설": dict(
        slots=dict(account=["적금 통장", "입출금 통장", "외화 통장"], amount=["10만 원", "50만 원", "100만 원"]),
        open=("안녕하세요, 무엇을 도와드릴까요?", "{account}을(를) 새로 만들고 싶어요. 처음에 {amount}을(를) 넣으려고요."),
        extras=[("주소를 확인하겠습니다. 주소가 어떻게 되세요?", "제 주소는 #Address#입니다.", "#Person2#는 주소 #Address#를 알려줍니다."),
                ("생년월일도 말씀해 주세요.", "제 생년월일은 #DateOfBirth#입니다.", "#Person2#는 생년월일 #DateOfBirth#를 알려줍니다.")],
        summary="#Person2#는 {account}을(를) 새로 만들고 처음에 {amount}을(를) 넣으려고 합니다."),
    "공항 수속": dict(
        slots=dict(dest=["뉴욕", "런던", "도쿄", "시드니", "파리"], bags=["가방 하나", "가방 두 개", "큰 캐리어 하나"],
                   seat=["창가 좌석", "통로 좌석", "비상구 좌석"]),
        open=("{dest}행 비행기 탑승 수속 도와드리겠습니다. 여권 번호를 확인해도 될까요?", "네, 제 여권 번호는 #PassportNumber#입니다."),
        extras=[("부치실 짐이 있으신가요?", "네, {bags}을(를) 부치려고요.", "#Person2#는 {bags}을(를) 부칩니다."),
                ("좌석은 어디로 드릴까요?", "{seat}으로(로) 부탁드려요.", "#Person2#는 {seat}을(를) 부탁합니다.")],
        summary="#Person2#는 {dest}행 비행기 탑승 수속을 하며 여권 번호 #PassportNumber#를 알려줍니다."),
    "택배 배송": dict(
        slots=dict(item=["책", "노트북", "운동화", "선물 상자"], days=["사흘", "일주일", "닷새"]),
        open=("{item}을(를) 주문했는데 {days}이(가) 지나도 아직 안 왔어요.", "불편을 드려 죄송합니다. 배송 주소를 확인해 보겠습니다."),
        extras=[("제 주소는 #Address#예요.", "확인해 보니 주소가 잘못 입력되어 있었네요.", "주소가 잘못 입력되어 있었습니다."),
                ("그럼 언제 받을 수 있나요?", "내일 오후까지 다시 보내 드리겠습니다.", "내일 오후까지 다시 보내 주기로 합니다.")],
        summary="#Person1#은 {item}을(를) 주문했는데 {days}이(가) 지나도 안 왔다고 하고, #Person2#는 배송 주소를 확인합니다."),
    "호텔 예약": dict(
        slots=dict(room=["싱글룸", "더블룸", "스위트룸", "트윈룸"], nights=["하룻밤", "이틀", "사흘"], date=DATES,
                   price=["1박에 9만 원", "1박에 15만 원", "1박에 30만 원"]),
        open=("{date}부터 {nights} 묵을 {room}이(가) 있나요?", "네, 있습니다. {room}은(는) {price}입니다."),
        extras=[("조식도 포함인가요?", "네, 조식은 7시부터 10시까지 포함입니다.", "조식도 포함입니다."),
                ("체크인은 몇 시부터인가요?", "오후 3시부터 가능합니다.", "")],
        summary="#Person1#은 {date}부터 {nights} 묵을 {room}을(를) 찾고, #Person2#는 {price}이라고 알려줍니다."),
    "길 안내": dict(
        slots=dict(dest=["시청", "기차역", "국립 박물관", "중앙 도서관", "우체국"], minutes=["5분", "10분", "15분"],
                   route=["이 길로 쭉 가다가 두 번째 사거리에서 왼쪽으로", "버스 정류장 앞에서 오른쪽으로", "다리를 건너서 바로 왼쪽으로"]),
        open=("실례합니다, {dest}에 어떻게 가나요?", "{route} 가시면 됩니다."),
        extras=[("걸어서 얼마나 걸리나요?", "걸어서 {minutes} 정도 걸려요.", "걸어서 {minutes} 정도 걸립니다."),
                ("혹시 근처에 지하철역도 있나요?", "네, {dest} 바로 옆에 있어요.", "")],
        summary="#Person1#은 {dest}에 어떻게 가는지 묻고, #Person2#는 {route} 가라고 알려줍니다."),
    "음식 주문": dict(
        slots=dict(dish=["김치찌개", "불고기 정식", "해물 파전", "비빔밥", "짜장면"], drink=["콜라", "아이스티", "맥주", "녹차"],
                   count=["하나", "두 개", "세 개"]),
        open=("주문하시겠어요?", "네, {dish} {count}하고 {drink} 주세요."),
        extras=[("{dish}은(는) 맵게 해 드릴까요?", "아니요, 덜 맵게 해 주세요.", "#Person2#는 덜 맵게 해 달라고 합니다."),
                ("음식은 15분 정도 걸립니다.", "괜찮아요. 기다릴게요.", "")],
        summary="#Person1#이 주문을 받고, #Person2#는 {dish} {count}과(와) {drink}을(를) 주문합니다."),
    "이메일 문의": dict(
        slots=dict(subject=["과제 제출", "수강 신청", "장학금 신청", "세미나 참가"], deadline=["금요일까지", "이번 주 안에", "내일 오전까지"]),
        open=("{subject} 관련해서 문의드리고 싶은데 어떻게 하면 되나요?", "자료를 이메일로 보내 주세요. 제 이메일 주소는 #Email#입니다."),
        extras=[("언제까지 보내면 될까요?", "{deadline} 보내 주시면 됩니다.", "{deadline} 보내 주면 됩니다."),
                ("혹시 파일 형식도 정해져 있나요?", "PDF 파일로 보내 주세요.", "")],
        summary="#Person1#은 {subject} 관련해서 문의하고, #Person2#는 자료를 이메일 주소 #Email#로 보내 달라고 합니다."),
    "생일 파티": dict(casual=True,
        slots=dict(friend=["지수", "민호", "Tom", "사라"], place=["우리 집", "학교 앞 카페", "피자 가게", "노래방"], date=DATES,
                   gift=["꽃다발", "케이크", "향수", "책"]),
        open=("{date}에 {place}에서 {friend}의 생일 파티를 할 거야. 올 수 있어?", "당연하지! {friend}의 생일 파티라면 꼭 갈게."),
        extras=[("선물은 뭘 준비하면 좋을까?", "{gift}이(가) 좋을 것 같아.", "선물로 {gift}을(를) 준비하기로 합니다."),
                ("다른 친구들에게는 비밀로 해 줘. 깜짝 파티거든.", "알았어, 아무한테도 말 안 할게.", "파티는 깜짝 파티입니다.")],
        summary="#Person1#은 #Person2#를 {date}에 {place}에서 하는 {friend}의 생일 파티에 초대합니다."),
    "도서관": dict(
        slots=dict(book=["한국사 책", "영어 문법책", "요리책", "소설책"], period=["2주", "일주일", "열흘"]),
        open=("{book}을(를) 빌리고 싶은데 어디에 있나요?", "{book}은(는) 3층에 있어요. 최대 {period} 동안 빌릴 수 있습니다."),
        extras=[("회원 카드를 새로 만들어야 하나요?", "네, 신분증을 보여 주시면 바로 만들어 드릴게요.", "#Person1#은 회원 카드를 새로 만듭니다."),
                ("늦게 반납하면 어떻게 되나요?", "하루에 100원씩 연체료가 있어요.", "늦게 반납하면 연체료가 있습니다.")],
        summary="#Person1#은 {book}을(를) 빌리려고 하고, #Person2#는 3층에 있으며 {period} 동안 빌릴 수 있다고 알려줍니다."),
}
FILLERS = [
    ("그런데 요즘 날씨가 많이 춥네요.", "맞아요, 아침에는 특히 더 추워요."), ("요즘 일이 많아서 정말 바빠요.", "저도 그래요. 주말에도 쉬지 못했어요."),
    ("아, 잠깐만요. 전화가 왔네요.", "괜찮아요, 천천히 받으세요."), ("이 근처에 새 커피숍이 생겼대요.", "정말요? 다음에 같이 가 봐요."),
    ("주말에는 보통 뭐 하세요?", "집에서 영화를 보거나 산책을 해요."), ("요즘 감기가 유행이래요.", "그러게요, 손을 자주 씻어야겠어요."),
    ("혹시 시간 괜찮으세요?", "네, 오늘은 여유가 좀 있어요."), ("말씀 들으니까 마음이 놓이네요.", "다행이에요. 걱정하지 마세요."),
    ("제가 이런 일은 처음이라서 잘 몰라요.", "괜찮아요, 제가 자세히 설명해 드릴게요."), ("아침을 못 먹어서 배가 좀 고프네요.", "이따가 간단하게 뭐라도 드세요."),
    ("지난주에는 비가 정말 많이 왔죠.", "네, 우산을 안 챙겨서 다 젖었어요."), ("요즘 물가가 너무 올랐어요.", "맞아요, 장 보러 가면 깜짝 놀라요."),
    ("오늘 길이 많이 막히던데요.", "퇴근 시간이라 그런 것 같아요."), ("이번 주말에 가족들이 놀러 와요.", "좋겠네요. 즐거운 시간 보내세요."),
    ("그 얘기를 들으니 예전 생각이 나네요.", "그래요? 그때 무슨 일이 있었는데요?"), ("다시 한 번 말씀해 주시겠어요?", "네, 천천히 다시 말씀드릴게요."),
    ("사실 저는 좀 걱정이 됐어요.", "걱정할 필요 없어요. 다 잘될 거예요."), ("시간 내 주셔서 정말 감사해요.", "별말씀을요. 언제든지 물어보세요."),
    ("오늘따라 사람이 정말 많네요.", "주말이라 그런가 봐요."), ("그건 제가 생각하지 못했네요.", "저도 처음에는 몰랐어요."),
    ("솔직히 조금 피곤하긴 해요.", "무리하지 말고 푹 쉬세요."), ("혹시 다른 방법은 없을까요?", "지금으로서는 이게 제일 좋은 방법이에요."),
    ("아이들은 잘 지내요?", "네, 덕분에 다들 잘 지내요."), ("요즘 새로 시작한 취미가 있어요.", "오, 뭔데요? 궁금하네요."),
    ("어제 본 드라마가 정말 재미있었어요.", "저도 그 드라마 좋아해요. 결말이 궁금해요."), ("이 동네는 정말 조용하네요.", "네, 그래서 저도 여기가 좋아요."),
    ("요즘 잠을 잘 못 자요.", "자기 전에 휴대폰을 멀리 두면 좀 나아요."), ("아무튼 알려 주셔서 고마워요.", "도움이 됐다니 저도 기뻐요."),
]
TAILS = ["음, 그렇군요.", "사실 저도 그게 좀 궁금했어요.", "제가 요즘 정신이 좀 없어서요.", "그 말씀을 들으니 안심이 되네요.",
         "미리 확인해 두면 좋을 것 같아서요.", "지난번에도 비슷한 일이 있었거든요.", "생각보다 쉽지 않더라고요.", "아무튼 이번에는 꼭 제대로 하고 싶어요."]
CLOSINGS = ["좋아요, 그럼 그렇게 해요.", "알겠습니다. 정말 고마워요.", "네, 그럼 나중에 다시 얘기해요.", "감사합니다. 좋은 하루 보내세요."]
# Topics between friends (casual=True) speak 반말, so their small talk must too.
CASUAL_FILLERS = [
    ("그런데 요즘 날씨가 많이 춥다.", "맞아, 아침에는 특히 더 추워."), ("요즘 일이 많아서 정말 바빠.", "나도 그래. 주말에도 못 쉬었어."),
    ("아, 잠깐만. 전화 왔다.", "괜찮아, 천천히 받아."), ("이 근처에 새 카페 생겼대.", "진짜? 다음에 같이 가 보자."),
    ("요즘 감기가 유행이래.", "그러게, 손 자주 씻어야겠다."), ("아침을 못 먹어서 배고파.", "이따가 뭐라도 좀 먹어."),
    ("요즘 물가가 너무 올랐어.", "맞아, 장 보러 가면 깜짝 놀라."), ("어제 본 드라마 진짜 재밌었어.", "나도 그거 봐. 결말이 궁금해."),
    ("요즘 잠을 잘 못 자.", "자기 전에 휴대폰을 멀리 둬 봐."), ("솔직히 좀 피곤하긴 해.", "무리하지 말고 푹 쉬어."),
    ("주말에는 보통 뭐 해?", "집에서 영화 보거나 산책해."), ("그건 내가 생각 못 했네.", "나도 처음엔 몰랐어."),
    ("요즘 새로 시작한 취미가 있어.", "오, 뭔데? 궁금하다."), ("오늘 길이 엄청 막히더라.", "퇴근 시간이라 그런가 봐."),
]
CASUAL_TAILS = ["음, 그렇구나.", "사실 나도 그게 좀 궁금했어.", "내가 요즘 정신이 좀 없어서.", "그 말 들으니까 안심된다.",
                "미리 정해 두면 좋을 것 같아서.", "지난번에도 비슷한 일이 있었거든.", "생각보다 쉽지 않더라."]
CASUAL_CLOSINGS = ["좋아, 그럼 그렇게 하자.", "알았어. 진짜 고마워.", "응, 그럼 나중에 또 얘기하자."]
REGISTERS = {False: (FILLERS, TAILS, CLOSINGS), True: (CASUAL_FILLERS, CASUAL_TAILS, CASUAL_CLOSINGS)}
_JOSA = re.compile(r"(.)(을\(를\)|이\(가\)|은\(는\)|과\(와\)|으로\(로\))")


def attach_josa(text: str) -> str:
    """Resolve `을(를)`-style particle pairs by the final consonant of the preceding syllable; a mask such as
    `#PhoneNumber#` counts as vowel-final, as in '#PhoneNumber#를'."""
    def pick(m: re.Match) -> str:
        code = ord(m.group(1)) - 0xAC00
        final = code % 28 if 0 <= code < 11172 else 0
        with_final, without = m.group(2)[:-1].split("(")
        use_with = final != 0 and not (with_final == "으로" and final == 8)  # ㄹ-final takes 로
        return m.group(1) + (with_final if use_with else without)
    return _JOSA.sub(pick, text)


def lengthen(rng: random.Random, lines: list[list], tails: list[str]) -> None:
    """Add 0-3 distinct tail sentences to every turn but the first (before a question, after a statement) so
    turn lengths vary like the real ones (~20-190 chars), and pad dialogues to the real minimum (~110 chars)."""
    def add(line: list, extra: list[str]) -> None:
        line[1] = " ".join(extra + [line[1]] if line[1].endswith("?") else [line[1]] + extra)

    for line in lines[1:]:
        add(line, rng.sample(tails, next(k for k in range(4) if k == 3 or rng.random() > 0.40)))
    while sum(len(text) + 12 for _, text in lines) < 120:
        line = rng.choice(lines[1:])
        add(line, [rng.choice([t for t in tails if t not in line[1]])])


def render(rng: random.Random, lines: list[list]) -> str:
    """`#PersonN#: text` turns joined by "\n"; ~18% of real dialogues end every line but the last in a space,
    ~6% only some lines."""
    style = rng.random()
    texts = [f"#Person{who}#: {text}" for who, text in lines]
    for i in range(len(texts) - 1):
        if style < 0.18 or (style < 0.24 and rng.random() < 0.4):
            texts[i] += " "
    return "\n".join(texts)


def make_example(rng: random.Random, topic: str, n_turns: int) -> tuple[str, str]:
    """One (dialogue, summary) pair of `topic` with exactly `n_turns` turns (>= 2)."""
    spec = TOPICS[topic]
    vals = {k: rng.choice(v) for k, v in spec["slots"].items()}
    fill = lambda s: attach_josa(s.format(**vals))  # noqa: E731
    n_pairs = (n_turns - 2) // 2
    chosen = rng.sample(spec["extras"], min(n_pairs, len(spec["extras"])))
    extras = [e for e in spec["extras"] if e in chosen]  # scenario pairs keep their natural order
    body = [(fill(a), fill(b), True) for a, b, _ in extras]
    fillers, tails, closings = REGISTERS[spec.get("casual", False)]
    for a, b in rng.sample(fillers, n_pairs - len(extras)):
        body.insert(rng.randint(0, len(body)), (a, b, False))
    lines = [[1, fill(spec["open"][0])], [2, fill(spec["open"][1])]]
    for a, b, _ in body:
        lines += [[1, a], [2, b]]
    if n_turns % 2:
        lines.append([1, rng.choice(closings)])
    lengthen(rng, lines, tails)
    filler_idx = [2 + 2 * i + 1 for i, (_, _, scenario) in enumerate(body) if not scenario]
    if filler_idx and rng.random() < 0.08:  # a third speaker now and then, as in the real data
        for i in rng.sample(filler_idx, rng.randint(1, len(filler_idx))):
            lines[i][0] = 3
    # Real summaries (~80 chars) cover the gist; only long dialogues get a second scenario sentence.
    notes = [fill(s) for _, _, s in extras if s]
    summary = " ".join([fill(spec["summary"])] + notes[: 1 if n_turns < 14 else 2])
    return render(rng, lines), summary


def turn_counts(rng: random.Random, n: int) -> list[int]:
    """`n` turn counts in random order: quantiles of a log-normal fitted to the real dev set (median 9, mean
    ~9.4), so that even a 60-row split matches it, with the real extremes 2 and 29 always present."""
    dist = NormalDist(math.log(8.6), 0.42)
    turns = [min(29, max(2, round(math.exp(dist.inv_cdf((i + 0.5) / n))))) for i in range(n)]
    turns[0], turns[-1] = 2, 29
    rng.shuffle(turns)
    return turns


def make_split(rng: random.Random, split: str, n: int) -> pd.DataFrame:
    """`n` rows of `split` with ids `{split}_k`; a gap or two in the numbering, as in the real files."""
    gaps = set(rng.sample(range(1, n), rng.randint(1, 2)))
    ids = [k for k in range(n + len(gaps)) if k not in gaps][:n]
    rows = []
    for k, n_turns in zip(ids, turn_counts(rng, n)):
        topic = rng.choice(sorted(TOPICS))
        dialogue, summary = make_example(rng, topic, n_turns)
        rows.append(dict(fname=f"{split}_{k}", dialogue=dialogue, summary=summary, topic=topic))
    frame = pd.DataFrame(rows)
    return frame[["fname", "dialogue"]] if split == "test" else frame


def stats(frame: pd.DataFrame) -> dict[str, float]:
    """Length statistics of a split, to compare with the real data."""
    chars, turns = frame["dialogue"].str.len(), frame["dialogue"].str.count("\n") + 1
    out = dict(rows=len(frame), mean=chars.mean(), median=chars.median(), min=chars.min(), max=chars.max(),
               turns_mean=turns.mean(), turns_min=turns.min(), turns_max=turns.max())
    if "summary" in frame:
        s = frame["summary"].str.len()
        out.update(sum_mean=s.mean(), sum_min=s.min(), sum_max=s.max())
    return out


def print_comparison(frames: dict[str, pd.DataFrame], reference: Path | None) -> None:
    """Print one stats line per generated split and, when the file exists, for the real reference split."""
    table = {name: stats(f) for name, f in frames.items()}
    if reference is not None and reference.is_file():
        table[f"REAL {reference.name}"] = stats(pd.read_csv(reference, dtype=str, keep_default_na=False))
    elif reference is not None:
        print(f"(reference {reference} not found; pass --compare PATH to compare with real data)")
    cols = ["rows", "mean", "median", "min", "max", "turns_mean", "turns_min", "turns_max", "sum_mean", "sum_min", "sum_max"]
    print(f"{'split':<14}" + "".join(f"{c:>11}" for c in cols))
    for name, row in table.items():
        print(f"{name:<14}" + "".join(f"{row[c]:>11.1f}" if c in row else f"{'-':>11}" for c in cols))


def main(argv: list[str] | None = None) -> None:
    """Write train/dev/test CSVs under --out and print the length comparison."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/sample"), help="Output folder.")
    parser.add_argument("--seed", type=int, default=0, help="Random seed; the same seed gives identical files.")
    parser.add_argument("--sizes", type=int, nargs=3, default=[300, 60, 60], metavar=("TRAIN", "DEV", "TEST"))
    parser.add_argument("--compare", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/dev.csv",
                        help="Real dev.csv to compare length statistics with (read only, skipped if missing).")
    args = parser.parse_args(argv)
    if min(args.sizes) < 3:
        parser.error(f"--sizes {' '.join(map(str, args.sizes))}: every split needs at least 3 rows")
    rng = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    frames = {split: make_split(rng, split, n) for split, n in zip(["train", "dev", "test"], args.sizes)}
    for split, frame in frames.items():
        frame.to_csv(args.out / f"{split}.csv", index=False, encoding="utf-8", lineterminator="\n")
    print(f"wrote {', '.join(f'{s}.csv ({len(f)} rows)' for s, f in frames.items())} to {args.out}")
    print_comparison(frames, args.compare)


if __name__ == "__main__":
    main()
